"""What the scripts share at the door: flags checked in one line each.

absl reports a bad flag as a FATAL line plus a hint about --helpfull and exits
with 1; a user should instead read one `ERROR:` line that names the flag, the
value and what is allowed, and scripts should see exit code 2 (the usual code
for a usage error). The checks themselves are absl's own: bounds on numeric
flags, enums, and validators registered next to the flags.
"""

import contextlib
import dataclasses
import math
import sys
import typing

from absl import flags

from poets import files
from poets.core.networks import architectures
from poets.errors import PoetsError
from poets import settings

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


def absl_verbosity(logging_verbosity):
  """The original's --logging_verbosity (DEBUG ... FATAL) as absl names it."""
  return logging_verbosity.lower().replace('warn', 'warning')


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


def define_flags(defaults, helps, bounds=None):
  """Defines a flag for each `helps` entry (flag name -> help text), typed
  and with the default of the `defaults` field of the same name, so a flag
  and the setting it fills cannot disagree. `bounds` maps a number flag to
  its (lower, upper) bound, None for no bound."""
  # The flags belong to the script that asks for them, so its --help lists
  # them and experiments.py can adopt retrain.py's.
  flags.disclaim_key_flags()
  define = {bool: flags.DEFINE_bool, int: flags.DEFINE_integer,
            float: flags.DEFINE_float, str: flags.DEFINE_string}
  kinds = {field.name: field.type for field in dataclasses.fields(defaults)}
  for name, help_text in helps.items():
    # `int | None` (no default value) is an integer flag.
    kind = next((k for k in typing.get_args(kinds[name])
                 if k is not type(None)), kinds[name])
    lower, upper = (bounds or {}).get(name, (None, None))
    limits = ({'lower_bound': lower, 'upper_bound': upper}
              if kind in (int, float) else {})
    define[kind](name, getattr(defaults, name), help_text, **limits)


def define_module_flags(defaults):
  """The flags that pick and load the feature extractor, with their checks:
  retrain.py's, and beam_bottlenecks.py's, which must make the same cache.
  `defaults` is a RetrainSettings."""
  define_flags(defaults, {
      'architecture': (
          'Which network to use: efficientnet_lite0 (default, offline), '
          "efficientnet_lite1, efficientnet_lite2, or the codelab's frozen "
          'graphs mobilenet_<1.0|0.75|0.50|0.25>_<224|192|160|128>'
          '[_quantized] and inception_v3 (their archive from --model_dir, '
          'downloaded once if missing; mobilenet_0.25_224 ships). Any letter '
          'case.'),
      'tfhub_module': (
          'Which image feature-vector module to use instead of '
          '--architecture: a TF Hub URL, a .tar.gz URL or a local directory '
          '(TF2 SavedModel or TF1 Hub format).'),
      'model_dir': (
          "Where the embedded modules are built, the codelab's network "
          'archives are found or downloaded, and TF Hub modules are cached.'),
      'input_height': ('Image height for a module whose signature does not '
                       'fix one; 0 = take it from the module.'),
      'input_width': ('Image width for a module whose signature does not fix '
                      'one; 0 = take it from the module.'),
  }, bounds={'input_height': (0, settings.MAX_IMAGE_SIZE),
             'input_width': (0, settings.MAX_IMAGE_SIZE)})
  flags.register_validator('model_dir', is_path,
                           'must name a folder (not empty, no NUL)')
  flags.register_validator(
      'architecture', architectures.is_architecture,
      f'must be one of {architectures.architecture_choices()} (any letter case)'
  )
  flags.register_validator('tfhub_module', is_optional_path,
                           'must not hold NUL')
  flags.register_multi_flags_validator(
      ['input_height', 'input_width'],
      lambda f: bool(f['input_height']) == bool(f['input_width']),
      'pass both or neither')
  flags.register_multi_flags_validator(
      ['architecture', 'tfhub_module'],
      lambda f: not (f['architecture'] and f['tfhub_module']),
      'pass either --architecture or --tfhub_module, not both')


def environment_error_line(error):
  """The one line a script prints for `error`, a full disk or a denied
  permission (files.environment_error); re-raises any other error."""
  line = files.environment_error(error)
  if line is None:
    raise error
  return line


@contextlib.contextmanager
def one_line_errors():
  """Inside, a user's mistake (PoetsError) or the machine's (a full disk, a
  denied permission) ends the script with one `ERROR:` line; anything else
  is a bug and keeps its traceback."""
  try:
    yield
  except PoetsError as e:
    sys.exit(f'ERROR: {e}')
  except Exception as e:  # pylint: disable=broad-except
    sys.exit(f'ERROR: {environment_error_line(e)}')
