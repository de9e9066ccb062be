"""Tests for poets/summaries.py: only our event folders are ever moved, and
earlier runs leave the folder TensorBoard is pointed at."""

import os

import pytest

from conftest import fill, make_image_dir
from poets import files
from poets import pipeline
from poets import settings
from poets import summaries
from poets.errors import PoetsError


FOLDERS = {name: (summaries.EVENT_FILES,) for name in summaries.EVENT_FOLDERS}


def _event_folder(path, marked=True):
  path.mkdir(parents=True)
  (path / 'events.out.tfevents.1.host.42').write_bytes(b'events')
  if marked:
    files.mark_ours(str(path), [summaries.EVENT_FILES], 'retrain.py')


def _tree(root):
  return sorted(os.path.relpath(os.path.join(folder, name), root)
                for folder, _, names in os.walk(root) for name in names)


def test_image_dir_named_train_is_never_moved(tmp_path, monkeypatch,
                                              tf2_module):
  """`cd photos_parent; retrain.py --image_dir train --summaries_dir .`
  moved the photos into ~previous_runs."""
  make_image_dir(tmp_path / 'train', per_class=3)
  before = _tree(tmp_path)
  monkeypatch.chdir(tmp_path)
  config = settings.RetrainSettings(
      image_dir='train', summaries_dir='.', tfhub_module=tf2_module,
      output_graph='out/g.pb', output_labels='out/labels.txt',
      bottleneck_dir='bottlenecks', model_dir='models',
      checkpoint_path='checkpoint/x', how_many_training_steps=2)
  with pytest.raises(PoetsError, match=r'--summaries_dir train holds files '
                     r'retrain.py did not write \(blue and 2 more\)'):
    pipeline.run(config)
  assert _tree(tmp_path) == before


@pytest.mark.parametrize('content', ['notes.txt', 'sub/events.out.tfevents.1'])
def test_foreign_event_folder_names_are_refused(tmp_path, content):
  folder = tmp_path / 'summaries' / 'validation'
  (folder / content).parent.mkdir(parents=True)
  (folder / content).write_text('mine')
  with pytest.raises(PoetsError, match='--summaries_dir .*validation holds '
                     'files retrain.py did not write'):
    summaries.check(str(tmp_path / 'summaries'), str(tmp_path / 'photos'),
                    FOLDERS)
  with pytest.raises(PoetsError):
    summaries.claim(str(tmp_path / 'summaries'), FOLDERS)
  assert (folder / content).read_text() == 'mine'


def test_summaries_inside_image_dir_are_refused(tmp_path):
  make_image_dir(tmp_path / 'photos', per_class=1)
  with pytest.raises(PoetsError, match='inside --image_dir'):
    summaries.check(str(tmp_path / 'photos' / 'logs'),
                    str(tmp_path / 'photos'), FOLDERS)


def test_earlier_runs_leave_the_tensorboard_folder(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  current = tmp_path / summaries.default_dir('efficientnet_lite0')
  for name in summaries.EVENT_FOLDERS:
    _event_folder(current / name, marked=name != 'train')  # train: legacy
  summaries.claim(summaries.default_dir('efficientnet_lite0'), FOLDERS).close()
  assert sorted(os.listdir(current)) == sorted(
      [summaries.LOCK, *summaries.EVENT_FOLDERS])  # New, empty but marked.
  assert all(files.strangers(str(current / name)) == []
             for name in summaries.EVENT_FOLDERS)
  previous = tmp_path / 'tf_files' / 'previous_runs' / 'efficientnet_lite0'
  (stamp,) = os.listdir(previous)
  assert sorted(os.listdir(previous / stamp)) == sorted(
      summaries.EVENT_FOLDERS)
  assert (previous / stamp / 'train' / 'events.out.tfevents.1.host.42'
          ).read_bytes() == b'events'


def test_own_summaries_dir_keeps_earlier_runs_inside(tmp_path):
  _event_folder(tmp_path / 'mine' / 'train')
  summaries.claim(str(tmp_path / 'mine'), FOLDERS).close()
  (stamp,) = os.listdir(tmp_path / 'mine' / summaries.EARLIER_RUNS)
  assert os.listdir(tmp_path / 'mine' / summaries.EARLIER_RUNS / stamp) == [
      'train']


def test_marker_names_what_the_folder_may_hold(tmp_path):
  _event_folder(tmp_path / 'train')
  assert files.strangers(str(tmp_path / 'train')) == []
  (tmp_path / 'train' / 'photo.jpg').write_bytes(b'x')
  assert files.strangers(str(tmp_path / 'train')) == ['photo.jpg']


# What sits on the full disk, the room left there (for its folders, not
# what goes in them), and the warning the run gives as it goes on.
@pytest.mark.parametrize('on_full_disk, leave, warning', [
    ('summaries', 32 * 1024, 'Could not write TensorBoard summaries: '),
    ('checkpoint', 4 * 1024, 'Could not save the checkpoint: ')])
def test_a_full_disk_under_the_extras_costs_no_layer(
    tmp_path, tf2_module, small_disk, caplog, on_full_disk, leave, warning):
  folders = {name: (small_disk if name == on_full_disk else tmp_path) / name
             for name in ('summaries', 'checkpoint')}
  config = settings.RetrainSettings(
      image_dir=make_image_dir(tmp_path / 'photos', per_class=6),
      output_graph=str(tmp_path / 'out' / 'graph.pb'),
      output_labels=str(tmp_path / 'out' / 'labels.txt'),
      bottleneck_dir=str(tmp_path / 'bottlenecks'), tfhub_module=tf2_module,
      model_dir=str(tmp_path / 'models'), how_many_training_steps=20,
      eval_step_interval=5, summaries_dir=str(folders['summaries']),
      checkpoint_path=str(folders['checkpoint'] / 'x'), random_seed=0)
  fill(small_disk, leave=leave)
  result = pipeline.run(config)
  assert result.training.steps_done == 20
  assert os.path.getsize(config.output_graph) > 0
  assert warning + 'Cannot write' in caplog.text
  assert 'No space left on device' in caplog.text
