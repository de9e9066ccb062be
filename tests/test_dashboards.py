"""Tests for poets/extras/dashboards.py; the dashboards as TensorBoard shows
them are checked through its server in test_tensorboard.py."""

import os

import numpy as np
from tensorboard.plugins.projector import projector_plugin

from conftest import encode
from conftest import solid_image
from poets.core import bottlenecks
from poets.core import training
from poets.extras import dashboards


def _split(count, label_count=2, size=4, name='photo'):
  return bottlenecks.SplitBottlenecks(
      np.arange(count * size, dtype=np.float32).reshape(count, size),
      np.arange(count) % label_count,
      [f'/photos/{name}_{i}.jpg' for i in range(count)])


def test_projector_sample_caps_training_photos_repeatably():
  splits = {'training': _split(dashboards.TRAINING_POINTS + 50),
            'validation': _split(7), 'testing': _split(5)}
  sample = dashboards.projector_sample(splits, ['a', 'b'])
  assert [len(rows) for rows in sample.rows.values()] == [
      7, 5, dashboards.TRAINING_POINTS]
  assert sample.splits.count('training') == dashboards.TRAINING_POINTS
  training_rows = sample.rows['training']
  assert (np.diff(training_rows) > 0).all()
  assert len(sample) == len(sample.labels) == len(sample.features(splits))
  again = dashboards.projector_sample(splits, ['a', 'b'])
  assert (again.rows['training'] == training_rows).all()


def test_projector_reads_back_what_was_written(tmp_path):
  """Raw float32, or TSV where those bytes would read as text: zeros do,
  and the Projector would then fail to parse them."""
  photo = tmp_path / 'red.jpg'
  photo.write_bytes(encode(solid_image((220, 30, 30), 0)))
  sample = dashboards.ProjectorSample(
      {'testing': np.arange(2)}, ['red', 'tab\tlabel'], ['testing'] * 2,
      [str(photo), str(tmp_path / 'missing.jpg')])
  values = np.array([[0.5, -1.25], [3.0, 2.0]], np.float32)
  run = tmp_path / 'run'
  dashboards.write_projector(run, sample, {
      'bottlenecks': values, 'zeros': np.zeros([2, 2], np.float32)},
                             tmp_path / 'sprites')
  (cached,) = os.listdir(tmp_path / 'sprites')
  sprite = (run / dashboards.SPRITE).read_bytes()
  assert (tmp_path / 'sprites' / cached).read_bytes() == sprite
  # A changed photo is a new sprite; the same photos take the cached one.
  assert dashboards.cached_sprite(sample.filenames,
                                  tmp_path / 'sprites') == sprite
  photo.write_bytes(encode(solid_image((30, 30, 220), 0)))
  os.utime(photo, ns=(0, 0))
  assert dashboards.cached_sprite(sample.filenames,
                                  tmp_path / 'sprites') != sprite
  names = sorted(os.listdir(run))
  assert 'bottlenecks.bytes' in names and 'zeros.tsv' in names
  read = projector_plugin._read_tensor_binary_file(
      str(run / 'bottlenecks.bytes'), [2, 2])
  assert (read == values).all()
  assert (projector_plugin._read_tensor_tsv_file(
      str(run / 'zeros.tsv')) == 0).all()
  metadata = (run / dashboards.METADATA).read_text().splitlines()
  assert metadata == ['label\tsplit\tfile', 'red\ttesting\tred.jpg',
                      'tab label\ttesting\tmissing.jpg']


def test_misclassified_photos_most_confident_first(tmp_path):
  paths = []
  for index, colour in enumerate([(220, 30, 30), (30, 200, 40)]):
    paths.append(tmp_path / f'{index}.jpg')
    paths[-1].write_bytes(encode(solid_image(colour, index, size=200)))
  # The second mistake is the more confident: it comes first (top left).
  evaluation = training.Evaluation(
      0.0, 2, np.array([1, 0]), np.array([0, 1]), np.zeros([2, 2]),
      np.array([[0.4, 0.6], [0.9, 0.1]], np.float32),
      [str(path) for path in paths])
  image = dashboards.misclassified_image(evaluation, ['$red$', 'green'])
  top_left = image[80:150, 20:150].reshape(-1, 3).mean(axis=0)
  assert top_left[1] > 150 and top_left[0] < 80  # Green: paths[1].
  right = dict(evaluation.__dict__, predictions=np.array([0, 1]))
  assert dashboards.misclassified_image(
      training.Evaluation(**right), ['red', 'green']) is None
