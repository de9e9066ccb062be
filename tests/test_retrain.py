"""Tests for retrain.py itself: flags, one-line errors, the codelab flow."""

import os
import re
import subprocess
import sys

from absl import flags
import pytest

from conftest import encode, fill, make_image_dir, solid_image
from poets import cli
import retrain as retrain_script

FLAGS = flags.FLAGS

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def retrain(*args, cwd=None):
  """Runs retrain.py as a user would; returns (exit code, stdout+stderr)."""
  # As a user's shell has it: conftest.py sets TF_CPP_MIN_LOG_LEVEL.
  env = {name: value for name, value in os.environ.items()
         if name != 'TF_CPP_MIN_LOG_LEVEL'}
  process = subprocess.run(
      [sys.executable, os.path.join(ROOT, 'retrain.py'), *args], cwd=cwd,
      env=env, capture_output=True, text=True, timeout=300)
  return process.returncode, process.stdout + process.stderr


def test_codelab_flow_both_flag_spellings_and_outputs(tmp_path, tf2_module):
  make_image_dir(tmp_path / 'tf_files' / 'flower_photos')
  broken = tmp_path / 'tf_files' / 'flower_photos' / 'red' / 'broken.jpg'
  jpeg = encode(solid_image((200, 30, 30), 0, size=64))
  broken.write_bytes(jpeg[:len(jpeg) // 2])  # libjpeg logs 'Premature end'.
  code, output = retrain(
      '--how_many_training_steps', '50', '--eval_step_interval=25',
      f'--tfhub_module={tf2_module}', '--random_seed', '3', cwd=tmp_path)
  # A photo that cannot be decoded is skipped, and the run still succeeds.
  assert code == 0, output
  assert 'Skipping tf_files/flower_photos/red/broken.jpg' in output
  # Every photo found is counted in one split of the per-class table.
  total = re.search(r'^INFO: Images per class:\n.*^total +(\d+) +(\d+) +(\d+)$',
                    output, re.M | re.S)
  assert sum(int(n) for n in total.groups()) == 61, output
  # As the original's log read: one timestamp, no absl prefix.
  assert re.search(r'^INFO: \d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{6}: Step 49: '
                   r'Train accuracy = [\d.]+%$', output, re.M), output
  # No C++ line of TensorFlow's beside ours, such as libjpeg's.
  assert not re.search(r'^[IWEF]\d{4} ', output, re.M), output
  # Off a terminal the progress bar is plain lines, not carriage returns.
  assert '\r' not in output
  assert 'INFO: Bottlenecks: 61/61 img (100%) in ' in output
  assert ', 0 reused, 1 failed' in output
  assert re.search(r'Final test accuracy = [\d.]+% \(N=\d+\)', output)
  assert 'Traceback' not in output
  files = tmp_path / 'tf_files'
  assert (files / 'retrained_graph.pb').stat().st_size > 0
  assert (files / 'retrained_labels.txt').read_text() == 'blue\ngreen\nred\n'
  module_name = tf2_module.replace('/', '~')
  assert (files / 'training_summaries' / module_name / 'train').is_dir()
  assert (files / 'bottlenecks' / 'red' /
          f'red_000.jpg_{module_name}.txt').exists()


@pytest.mark.parametrize('args, message', [
    (['--image_dir', 'nowhere'], "Image directory 'nowhere' not found"),
    ([], 'flower_photos.tgz'),
    (['--architecture', 'mobilenet_0.50_224', '--tfhub_module', 'x'],
     'not both'),
    (['--image_dir', 'photos', '--tfhub_module', '/no/module'],
     "Module directory '/no/module' not found"),
    (['--image_dir', 'photos', '--output_graph', 'photos'],
     '--output_graph photos is a folder'),
    (['--image_dir', 'photos', '--saved_model_dir', 'photos'],
     '--saved_model_dir photos holds files retrain.py did not write'),
])
def test_user_errors_are_one_line_without_traceback(tmp_path, monkeypatch,
                                                    capsys, args, message):
  """retrain.py's own main, in-process: the flags parsed as on the command
  line, the error it exits with."""
  make_image_dir(tmp_path / 'photos', per_class=2)
  monkeypatch.chdir(tmp_path)
  FLAGS.unparse_flags()
  try:
    with pytest.raises(SystemExit) as exit_info:
      cli.parse_flags_or_exit(['retrain.py', *args])
      retrain_script.main(['retrain.py'])
  finally:
    FLAGS.unparse_flags()
  code = exit_info.value.code
  error = code if isinstance(code, str) else capsys.readouterr().err.strip()
  assert error.startswith('ERROR: ') and '\n' not in error
  assert message in error


def test_a_full_disk_is_one_line_naming_the_path(tmp_path, monkeypatch,
                                                 capsys, tf2_module,
                                                 small_disk):
  """The bottleneck cache on a full disk ended in a traceback."""
  make_image_dir(tmp_path / 'photos', per_class=3)
  monkeypatch.chdir(tmp_path)
  fill(small_disk)
  FLAGS.unparse_flags()
  try:
    with pytest.raises(SystemExit) as exit_info:
      cli.parse_flags_or_exit([
          'retrain.py', '--image_dir', 'photos', '--tfhub_module', tf2_module,
          '--bottleneck_dir', str(small_disk / 'cache')])
      retrain_script.main(['retrain.py'])
  finally:
    FLAGS.unparse_flags()
  error = exit_info.value.code
  assert re.fullmatch(f'ERROR: Cannot write {small_disk}/cache\\S* \\(No '
                      'space left on device\\); free some space there, or '
                      'choose another folder.', error), error
