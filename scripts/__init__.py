"""The codelab's command names: `python -m scripts.retrain`, and so on.

The codelab ran its scripts as modules of a `scripts` package from the
repository root. Each module here runs the top-level script of the same name
exactly as `python <name>.py` does (same flags, manual, messages and exit
codes), so the two spellings cannot drift apart.
"""

import os
import runpy

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_script(file_name):
  """Runs the top-level script `file_name` as its own `__main__`."""
  runpy.run_path(os.path.join(_ROOT, file_name), run_name='__main__')
