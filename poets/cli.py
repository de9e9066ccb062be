"""What the scripts share at the door: flags checked in one line each.

absl reports a bad flag as a FATAL line plus a hint about --helpfull and exits
with 1; a user should instead read one `ERROR:` line that names the flag, the
value and what is allowed, and scripts should see exit code 2 (the usual code
for a usage error). The checks themselves are absl's own: bounds on numeric
flags, enums, and validators registered next to the flags.
"""

import math
import sys

from absl import flags

USAGE_ERROR = 2


def parse_flags_or_exit(argv, known_only=False):
  """An `app.run(flags_parser=...)`: absl's parsing, errors as one line.

  With `known_only`, flags absl does not know are handed back with the
  positional arguments (beam_bottlenecks.py passes them on to Beam).
  """
  try:
    return flags.FLAGS(argv, known_only=known_only)
  except flags.Error as e:
    message = ' '.join(str(e).split())  # absl folds long messages.
    print(f'ERROR: {message}', file=sys.stderr)
    sys.exit(USAGE_ERROR)


def refuse_positional(argv, script):
  """Stray words are a mistake (a flag without its dashes, a space inside a
  value), not something to ignore silently."""
  if len(argv) > 1:
    print(f'ERROR: {script}: unexpected arguments {argv[1:]}; every value '
          'needs its flag (see --help).', file=sys.stderr)
    sys.exit(USAGE_ERROR)


def is_finite(value):
  return value is None or math.isfinite(value)


def is_path(value):
  """Anything the filesystem could name: not empty, no NUL byte."""
  return bool(value) and '\0' not in value


def is_optional_path(value):
  return value == '' or is_path(value)


def batch_size_or_all(value):
  """-1 means the whole set, as in the original; 0 and below -1 mean nothing."""
  return value == -1 or value >= 1
