"""Start-up shared by every script: TensorFlow loads quietly, logs read plainly.

TensorFlow 2.21 writes C++ lines to stderr while it loads and first looks for
a GPU, before it reads TF_CPP_MIN_LOG_LEVEL, so that variable cannot stop
them:

  WARNING: All log messages before absl::InitializeLog() is called are ...
  I0000 00:00:1795... cudart_stub.cc:31] Could not find cuda drivers on ...
  E0000 00:00:1795... cuda_platform.cc:52] failed call to cuInit: ...

They say nothing a user can act on, turn a one-line `ERROR:` into seven, and
make a search for ERROR find TensorFlow's. `import_tensorflow` sends stderr
through a filter while TensorFlow loads and lists its devices; the filter drops
exactly the known start-up lines and passes on everything else as it arrives.
After start-up TensorFlow's C++ library logs only FATAL lines
(TF_CPP_MIN_LOG_LEVEL=3): its ERROR lines, such as libjpeg's `jpeg_mem.cc:331]
Premature end of JPEG data` for a photo our own line already skips, repeat
what a Python exception or our log says. The TensorFlow Lite converter prints
a line of its settings straight to stderr, with no log level;
`library_lines_filtered` drops it around the conversion.
POETS_SHOW_TF_LOGS=1 leaves TensorFlow as it is, all its lines included.

`plain_log_lines` makes absl's log lines read like the original scripts':
`INFO: Looking for images in 'daisy'`, without absl's
`I1125 15:26:22.211835 140688337791872 images.py:133] ` prefix. Every script
starts with `begin_script`, which does both (or only the second, for a run
that may not need TensorFlow at all).
"""

import contextlib
import logging as std_logging
import os
import re
import signal
import sys

from absl import logging

SHOW_TF_LOGS = 'POETS_SHOW_TF_LOGS'

# absl's C++ prefix: severity, date or 0000, time, thread id, file:line.
_CPP_PREFIX = r'[IWEF]\d{4} [\d:.]+ +\d+ [\w.]+:\d+\] '
_START_UP_LINES = re.compile('|'.join([
    r'WARNING: All log messages before absl::InitializeLog\(\) is called are '
    r'written to STDERR',
    _CPP_PREFIX + r'Could not find cuda drivers on your machine, GPU will not '
    r'be used\.',
    # No NVIDIA driver (303), or the GPUs hidden by CUDA_VISIBLE_DEVICES=-1.
    _CPP_PREFIX + r'failed call to cuInit: INTERNAL: CUDA error: Failed call '
    r'to cuInit: (UNKNOWN ERROR \(303\)|CUDA_ERROR_NO_DEVICE: no '
    r'CUDA-capable device is detected)',
    _CPP_PREFIX + r'oneDNN custom operations are on\. You may see slightly '
    r'different numerical results due to floating-point round-off errors '
    r'from different computation orders\. To turn them off, set the '
    r'environment variable `TF_ENABLE_ONEDNN_OPTS=0`\.',
    # Two lines; shown only when TF_CPP_MIN_LOG_LEVEL is 0.
    _CPP_PREFIX + r'This TensorFlow binary is optimized to use available CPU '
    r'instructions in performance-critical operations\.',
    r'To enable the following instructions: [\w ]+, in other operations, '
    r'rebuild TensorFlow with the appropriate compiler flags\.',
]))
# What the int8 converter prints of its settings, with no log prefix.
_CONVERTER_LINE = re.compile(
    r'fully_quantize: \d+, inference_type: \d+, input_inference_type: \w+, '
    r'output_inference_type: \w+')


def is_start_up_line(line):
  """Whether `line` (text, no newline) is one of TensorFlow's start-up lines."""
  return _START_UP_LINES.fullmatch(line) is not None


def is_library_line(line):
  """Whether `line` is a start-up line or another known line of TensorFlow's
  C++ library that says nothing to a user."""
  return is_start_up_line(line) or _CONVERTER_LINE.fullmatch(line) is not None


def _pass_on(read_fd, write_fd):
  """Copies `read_fd` to `write_fd` line by line to EOF, less known library
  lines."""
  with open(read_fd, 'rb') as pipe:
    for line in pipe:
      text = line.decode('utf-8', 'replace').rstrip('\r\n')
      if not is_library_line(text):
        os.write(write_fd, line)


@contextlib.contextmanager
def library_lines_filtered():
  """Within the block, stderr (fd 2, C++ included) goes through the filter.

  The filter is a forked process reading a pipe, not a temporary file read
  back afterwards, so that nothing else is lost or held back even if the
  block never ends: a Python traceback arrives as it is written, and when
  TensorFlow aborts the process outright (a failed C++ check, a missing
  library) the filter sees the pipe close and has already passed the abort
  message on.
  """
  sys.stderr.flush()
  read_fd, write_fd = os.pipe()
  filter_pid = os.fork()
  if filter_pid == 0:
    try:
      # Ctrl-C belongs to the script; the filter ends when the pipe closes.
      signal.signal(signal.SIGINT, signal.SIG_IGN)
      os.close(write_fd)
      _pass_on(read_fd, 2)
    finally:
      os._exit(0)  # pylint: disable=protected-access
  os.close(read_fd)
  saved_fd = os.dup(2)
  os.dup2(write_fd, 2)
  os.close(write_fd)
  try:
    yield
  finally:
    sys.stderr.flush()
    os.dup2(saved_fd, 2)  # Closes the pipe's last write end: the filter ends.
    os.close(saved_fd)
    os.waitpid(filter_pid, 0)


def without_library_lines():
  """library_lines_filtered, for a block that may print known library lines;
  nothing is filtered with POETS_SHOW_TF_LOGS=1 or where there is no fork."""
  if os.environ.get(SHOW_TF_LOGS) == '1' or not hasattr(os, 'fork'):
    return contextlib.nullcontext()
  return library_lines_filtered()


def import_tensorflow():
  """Imports TensorFlow and lists its devices without the start-up lines.

  Call it before anything imports TensorFlow. Also hides TensorFlow's C++
  log lines after start-up, FATAL aside (TF_CPP_MIN_LOG_LEVEL=3, unless set),
  and its Python deprecation notices about tf.compat.v1, which are not for
  users. With POETS_SHOW_TF_LOGS=1 TensorFlow is left as it is.
  """
  # pylint: disable=g-import-not-at-top
  # tf.keras as tensorflow_hub's own tf_keras: one Keras is loaded, not two.
  os.environ.setdefault('TF_USE_LEGACY_KERAS', '1')
  if os.environ.get(SHOW_TF_LOGS) == '1':
    import tensorflow as tf
    return tf
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')
  # Already loaded (a test, a notebook): its start-up lines are long gone.
  quiet = 'tensorflow' not in sys.modules and hasattr(os, 'fork')
  with library_lines_filtered() if quiet else contextlib.nullcontext():
    import tensorflow as tf
    # The first look for devices is what tries cuInit.
    tf.config.list_physical_devices()
  tf.get_logger().setLevel('ERROR')
  return tf


@contextlib.contextmanager
def warnings_only():
  """Within the block, absl logs warnings and errors only."""
  verbosity = logging.get_verbosity()
  logging.set_verbosity(min(verbosity, logging.WARNING))
  try:
    yield
  finally:
    logging.set_verbosity(verbosity)


class PlainFormatter(std_logging.Formatter):
  """`LEVEL: message`, as the original's tf.logging lines read.

  training.py puts its own timestamp into the step lines, as the original
  did, so they carry exactly one.
  """

  def __init__(self):
    super().__init__('%(levelname)s: %(message)s')


def plain_log_lines():
  """absl's log lines without its prefix; call before the first log line."""
  logging.get_absl_handler().setFormatter(PlainFormatter())


def begin_script(tensorflow=True):
  """What every script does first, before anything imports TensorFlow:
  TensorFlow loaded without its start-up lines (unless `tensorflow` is
  False: a run that needs none, such as labelling with a .tflite, calls
  import_tensorflow itself only if it turns out to need it), absl's lines
  made plain."""
  if tensorflow:
    import_tensorflow()
  plain_log_lines()
