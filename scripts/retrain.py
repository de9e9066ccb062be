"""`python -m scripts.retrain`: the same as `python retrain.py`."""

from absl import app
from absl import flags

import retrain

__doc__ = retrain.__doc__  # --help prints the script's manual.
flags.adopt_module_key_flags(retrain)

if __name__ == '__main__':
  app.run(retrain.main)
