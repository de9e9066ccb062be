"""The codelab's spelling, `python -m scripts.<name>`, runs the same scripts.

`--help` is answered before a script loads TensorFlow, so each spelling is
run for real here at little cost; what the scripts then do is checked where
they are run as the README does (test_label_image.py, test_readme.py).
"""

import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# scripts/<name>.py for each top-level <name>.py.
SPELLED = sorted(
    name[:-len('.py')] for name in os.listdir(os.path.join(ROOT, 'scripts'))
    if name != '__init__.py' and os.path.isfile(os.path.join(ROOT, name)))
# Flags each script defines through poets.cli, which --help must list as the
# script's own.
OWN_FLAGS = {
    'retrain': ['--image_dir', '--how_many_training_steps', '--tfhub_module',
                '--architecture', '--random_crop', '--saved_model_dir',
                '--random_seed', '--input_height', '--output_tflite',
                '--tflite_quantization'],
    'label_image': ['--graph', '--input_layer', '--output_format'],
    'experiments': ['--sweep', '--learning_rate', '--tfhub_module'],
}


def run(*command):
  """Runs a command line from the repository root, as the codelab does."""
  return subprocess.run([sys.executable, *command], cwd=ROOT,
                        capture_output=True, text=True, timeout=300)


def test_every_top_level_script_has_its_module_spelling():
  assert {'retrain', 'label_image', 'experiments'} <= set(SPELLED)


@pytest.mark.parametrize('name', SPELLED)
def test_module_spelling_shows_the_scripts_manual_and_flags(name):
  script = run(f'{name}.py', '--help')
  module = run('-m', f'scripts.{name}', '--help')
  assert 'Try --helpfull' in script.stdout, script.stderr[-3000:]
  for flag in OWN_FLAGS.get(name, []):
    assert f'  {flag}:' in script.stdout, flag
  assert module.returncode == script.returncode
  # absl heads the flags with the script's path as it was given.
  assert module.stdout.replace(os.path.join(ROOT, f'{name}.py:'),
                               f'{name}.py:') == script.stdout
