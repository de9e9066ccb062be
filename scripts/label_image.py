"""`python -m scripts.label_image`: the same as `python label_image.py`."""

from absl import app
from absl import flags

import label_image

__doc__ = label_image.__doc__  # --help prints the script's manual.
flags.adopt_module_key_flags(label_image)

if __name__ == '__main__':
  app.run(label_image.main)
