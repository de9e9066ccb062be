"""Tests for poets/startup.py: TensorFlow's start-up lines go, nothing else."""

import logging as std_logging
import os
import subprocess
import sys
import textwrap

import pytest

from poets import startup

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Lines TensorFlow 2.21 printed at start-up on the machines we ran on.
START_UP_LINES = [
    'WARNING: All log messages before absl::InitializeLog() is called are '
    'written to STDERR',
    'I0000 00:00:1795623457.723697    3792 cudart_stub.cc:31] Could not find '
    'cuda drivers on your machine, GPU will not be used.',
    'E0000 00:00:1795623464.084307    3792 cuda_platform.cc:52] failed call '
    'to cuInit: INTERNAL: CUDA error: Failed call to cuInit: UNKNOWN ERROR '
    '(303)',
    'I0000 00:00:1795623728.817106   10564 port.cc:153] oneDNN custom '
    'operations are on. You may see slightly different numerical results due '
    'to floating-point round-off errors from different computation orders. '
    'To turn them off, set the environment variable `TF_ENABLE_ONEDNN_OPTS=0`.',
    'I0000 00:00:1795623728.945970   10564 cpu_feature_guard.cc:227] This '
    'TensorFlow binary is optimized to use available CPU instructions in '
    'performance-critical operations.',
    'To enable the following instructions: AVX2 FMA, in other operations, '
    'rebuild TensorFlow with the appropriate compiler flags.',
]


def python(code, **env):
  """Runs `code` in a fresh interpreter at the repository root."""
  return subprocess.run([sys.executable, '-c', textwrap.dedent(code)],
                        cwd=ROOT, capture_output=True, text=True, timeout=300,
                        env={**os.environ, **env})


@pytest.mark.parametrize('line', START_UP_LINES)
def test_known_start_up_lines_are_recognised(line):
  assert startup.is_start_up_line(line)


@pytest.mark.parametrize('line', [
    'ERROR: Image directory nowhere not found.',
    'WARNING: Skipping photos/red/broken.jpg: not an image',
    # A real CUDA problem on a machine with a GPU is not start-up noise.
    'E0000 00:00:1795623464.084307    3792 cuda_platform.cc:52] failed call '
    'to cuInit: INTERNAL: CUDA error: Failed call to cuInit: '
    'CUDA_ERROR_OUT_OF_MEMORY: out of memory',
    'F0000 00:00:1795623464.084307    3792 check.cc:12] Check failed: x > 0',
    'Could not find cuda drivers on your machine, GPU will not be used. '
    'And more.',
])
def test_other_lines_are_not(line):
  assert not startup.is_start_up_line(line)
  assert not startup.is_library_line(line)


def test_the_int8_converters_settings_line_is_a_library_line():
  line = ('fully_quantize: 0, inference_type: 6, input_inference_type: INT8, '
          'output_inference_type: INT8')
  assert startup.is_library_line(line)
  assert not startup.is_start_up_line(line)


def test_filter_drops_start_up_lines_and_keeps_the_rest_in_order():
  done = python(f"""
      import os, sys
      from poets import startup
      with startup.library_lines_filtered():
        for line in {START_UP_LINES!r}:
          os.write(2, line.encode() + b'\\n')  # As C++ writes: fd 2.
        print('from Python', file=sys.stderr)
        os.write(2, b'from C++\\n')
      print('after', file=sys.stderr)
      """)
  assert done.returncode == 0, done.stderr
  assert done.stderr == 'from Python\nfrom C++\nafter\n'


def test_a_python_crash_inside_the_filter_keeps_its_output_and_traceback():
  done = python(f"""
      import os
      from poets import startup
      with startup.library_lines_filtered():
        os.write(2, {START_UP_LINES[0]!r}.encode() + b'\\n')
        os.write(2, b'written before the crash\\n')
        raise RuntimeError('a bug during import')
      """)
  assert done.returncode == 1
  assert done.stderr.startswith('written before the crash\nTraceback')
  assert done.stderr.endswith('RuntimeError: a bug during import\n')
  assert 'InitializeLog' not in done.stderr


def test_a_hard_abort_inside_the_filter_still_shows_its_message():
  """A C++ check failure kills the process without running any finally."""
  done = python("""
      import os
      from poets import startup
      with startup.library_lines_filtered():
        os.write(2, b'F0000 00:00:1.0  1 x.cc:1] Check failed: x > 0\\n')
        os.write(2, b'*** Check failure stack trace: ***')  # No newline.
        os.abort()
      """)
  assert done.returncode == -6  # SIGABRT
  assert done.stderr == ('F0000 00:00:1.0  1 x.cc:1] Check failed: x > 0\n'
                         '*** Check failure stack trace: ***')


def test_the_variable_shows_tensorflows_start_up_lines():
  """Without it the scripts print no start-up line (test_flags.py checks
  each script's whole stderr)."""
  shown = python("""
      from poets import startup
      startup.import_tensorflow()
      """, POETS_SHOW_TF_LOGS='1')
  assert shown.returncode == 0
  # What TensorFlow printed on this machine is what the filter knows.
  unknown = [line for line in shown.stderr.splitlines()
             if not startup.is_start_up_line(line)]
  assert not unknown


def test_plain_formatter_reads_like_the_original():
  formatter = startup.PlainFormatter()

  def line(level, message):
    record = std_logging.LogRecord('absl', level, 'training.py', 367, message,
                                   None, None)
    return formatter.format(record)

  assert line(std_logging.INFO, '2026-11-25 12:00:00.123456: Step 0: Train '
              'accuracy = 74.0%') == ('INFO: 2026-11-25 12:00:00.123456: Step '
                                      '0: Train accuracy = 74.0%')
  assert line(std_logging.WARNING, 'Skipping x.jpg') == (
      'WARNING: Skipping x.jpg')
  assert line(std_logging.ERROR, 'no') == 'ERROR: no'

