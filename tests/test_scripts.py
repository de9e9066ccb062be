"""The codelab's spelling, `python -m scripts.<name>`, runs the same scripts."""

import os
import re
import subprocess
import sys

import pytest

from conftest import make_image_dir

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run(*command, check=True):
  """Runs a command line from the repository root, as the codelab does."""
  done = subprocess.run([sys.executable, *command], cwd=ROOT,
                        capture_output=True, text=True, timeout=600)
  assert done.returncode == 0 or not check, done.stderr[-3000:]
  return done


def _without_times(log):
  log = re.sub(r'\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+', '<time>', log)
  return re.sub(r'[\d.]+ (s|img/s)\b', r'<number> \1', log)


@pytest.mark.slow
def test_module_spelling_retrains_and_labels_exactly_as_the_scripts(
    tmp_path, tf2_module):
  photos = make_image_dir(tmp_path / 'photos')
  outputs = {}
  for name, command in [('script', ['retrain.py']),
                        ('module', ['-m', 'scripts.retrain'])]:
    out = tmp_path / name
    done = run(*command, '--image_dir', photos, '--tfhub_module', tf2_module,
               '--how_many_training_steps', '30', '--random_seed', '5',
               '--bottleneck_dir', str(out / 'bottlenecks'),
               '--summaries_dir', str(out / 'summaries'),
               '--checkpoint_path', str(out / 'checkpoint' / 'c'),
               '--output_graph', str(out / 'g.pb'),
               '--output_labels', str(out / 'labels.txt'))
    outputs[name] = (_without_times(done.stderr.replace(str(out), '<out>')),
                     (out / 'labels.txt').read_text())
  assert outputs['module'] == outputs['script']
  assert 'Final test accuracy' in outputs['script'][0]

  graph = str(tmp_path / 'script' / 'g.pb')
  labels = str(tmp_path / 'script' / 'labels.txt')
  image = os.path.join(photos, 'red', 'red_000.jpg')
  script = run('label_image.py', '--graph', graph, '--labels', labels,
               '--image', image, '--output_format', 'json')
  module = run('-m', 'scripts.label_image', '--graph', graph, '--labels',
               labels, '--image', image, '--output_format', 'json')
  assert '"red"' in script.stdout and module.stdout == script.stdout


@pytest.mark.parametrize('name', ['retrain', 'label_image', 'experiments'])
def test_each_module_spelling_runs_the_script_of_its_name(name, monkeypatch):
  """In-process: `python -m scripts.<name>` hands over to <name>.py."""
  import runpy
  import scripts
  ran = []
  monkeypatch.setattr(scripts, 'run_script', ran.append)
  runpy.run_module(f'scripts.{name}', run_name='__main__')
  assert ran == [f'{name}.py']


@pytest.mark.slow
@pytest.mark.parametrize('name, flags', [
    ('retrain', ['--image_dir', '--how_many_training_steps', '--tfhub_module',
                 '--architecture', '--random_crop', '--saved_model_dir',
                 '--random_seed', '--input_height', '--output_tflite',
                 '--tflite_quantization']),
    ('label_image', ['--graph', '--input_layer', '--output_format']),
    ('experiments', ['--sweep', '--learning_rate', '--tfhub_module'])])
def test_module_spelling_shows_the_scripts_manual_and_flags(name, flags):
  script = run(f'{name}.py', '--help', check=False)
  module = run('-m', f'scripts.{name}', '--help', check=False)
  assert 'Try --helpfull' in script.stdout
  # Flags defined through poets.cli are listed as the script's own.
  for flag in flags:
    assert f'  {flag}:' in script.stdout, flag
  assert module.returncode == script.returncode
  # absl heads the flags with the script's path as it was given.
  assert module.stdout.replace(os.path.join(ROOT, f'{name}.py:'),
                               f'{name}.py:') == script.stdout
