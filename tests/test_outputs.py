"""Tests for poets/outputs.py: a run's outputs are all new or all old after
any stop, and label_image.py tells a graph and labels of two runs apart."""

import json
import os
import re
import shutil

import pytest

from conftest import fill, make_image_dir
from poets.core import labeling
from poets.extras import tflite_converter
from poets import outputs
from poets import pipeline
from poets import settings
from poets.errors import PoetsError


@pytest.fixture
def run_config(tmp_path, tf2_module):
  return settings.RetrainSettings(
      image_dir=make_image_dir(tmp_path / 'photos', per_class=6),
      output_graph=str(tmp_path / 'out' / 'graph.pb'),
      output_labels=str(tmp_path / 'out' / 'labels.txt'),
      output_tflite=str(tmp_path / 'out' / 'model.tflite'),
      saved_model_dir=str(tmp_path / 'out' / 'saved_model'),
      bottleneck_dir=str(tmp_path / 'bottlenecks'), tfhub_module=tf2_module,
      model_dir=str(tmp_path / 'models'), how_many_training_steps=5,
      summaries_dir=str(tmp_path / 'summaries'),
      checkpoint_path=str(tmp_path / 'checkpoint' / 'x'), random_seed=0)


def _contents(folder):
  found = {}
  for root, _, names in os.walk(folder):
    for name in names:
      with open(os.path.join(root, name), 'rb') as f:
        found[os.path.relpath(os.path.join(root, name), folder)] = f.read()
  return found


def test_a_stop_during_the_tflite_step_leaves_the_old_set(run_config,
                                                          tmp_path,
                                                          monkeypatch):
  """Stopped while the .tflite was made, a run left its new graph and
  labels beside the old .tflite."""
  pipeline.run(run_config)
  before = _contents(tmp_path / 'out')
  assert {'graph.pb', 'labels.txt', 'labels.run.json', 'model.tflite',
          'saved_model/saved_model.pb'} <= set(before)

  def stopped(*args, **kwargs):
    raise KeyboardInterrupt

  monkeypatch.setattr(tflite_converter, 'convert', stopped)
  with pytest.raises(KeyboardInterrupt):
    pipeline.run(run_config.replace(random_seed=1))
  assert _contents(tmp_path / 'out') == before  # No temporary file either.


def test_graph_and_labels_of_two_runs_are_told_apart(retrained, tmp_path):
  config, _ = retrained
  graph = tmp_path / 'graph.pb'
  labels = tmp_path / 'labels.txt'
  shutil.copy(config.output_graph, graph)
  shutil.copy(config.output_labels, labels)
  shutil.copy(outputs.manifest_path(config.output_labels),
              outputs.manifest_path(str(labels)))
  photo = os.path.join(config.image_dir, 'red',
                       sorted(os.listdir(os.path.join(config.image_dir,
                                                      'red')))[0])

  def label():
    return labeling.label_images(settings.LabelConfig(
        graph=str(graph), labels=str(labels), images=[photo]))

  assert label().results[0].predictions[0].label == 'red'
  manifest_file = outputs.manifest_path(str(labels))
  manifest = json.loads(open(manifest_file).read())
  with open(manifest_file, 'w') as f:
    json.dump({**manifest, 'run_id': outputs.new_run_id()}, f)
  with pytest.raises(PoetsError, match=f'--labels {labels} was written by '
                     f'another run than --graph {graph}'):
    label()
  with open(manifest_file, 'w') as f:
    json.dump(manifest, f)
  labels.write_text('red\ngreen\nblue\n')  # Reordered by hand.
  with pytest.raises(PoetsError, match='changed since retrain.py wrote it'):
    label()
  os.unlink(manifest_file)  # Labels from elsewhere: nothing to check.
  assert label().results[0].predictions[0].label == 'blue'


def test_a_full_disk_under_the_outputs_is_one_line_and_keeps_the_old_set(
    run_config, tmp_path, small_disk):
  config = run_config.replace(
      output_graph=str(small_disk / 'graph.pb'),
      output_labels=str(small_disk / 'labels.txt'), output_tflite='',
      saved_model_dir='')
  pipeline.run(config)
  before = _contents(small_disk)
  fill(small_disk, leave=4096)
  before['filler'] = (small_disk / 'filler').read_bytes()
  with pytest.raises(PoetsError) as raised:
    pipeline.run(config.replace(random_seed=1))
  assert re.fullmatch(
      f'Cannot write {small_disk}/(labels.txt|labels.run.json|graph.pb) '
      r'\(No space left on device\); free some space there, or choose '
      'another folder.', str(raised.value))
  assert _contents(small_disk) == before
