"""`python -m scripts.experiments`: the same as `python experiments.py`."""

from absl import app
from absl import flags

import experiments

__doc__ = experiments.__doc__  # --help prints the script's manual.
flags.adopt_module_key_flags(experiments)

if __name__ == '__main__':
  app.run(experiments.main)
