"""Tests for poets/bottlenecks.py: the text cache and batched computing."""

import os

import numpy as np
import pytest
import tensorflow as tf

from conftest import TINY_BOTTLENECK, make_image_dir
from poets import bottlenecks
from poets import files
from poets import images
from poets import modules
from poets.errors import PoetsError


def _module(path):
  with tf.Graph().as_default():
    return modules.load_module(modules.ModuleSpec(path, 'tiny~module'))


def _cache(image_dir, module, bottleneck_dir):
  lists = images.create_image_lists(image_dir, 10, 10)
  return lists, *bottlenecks.cache_bottlenecks(lists, module,
                                               str(bottleneck_dir))


def _values(text):
  return np.array([float(value) for value in text.split(',')])


def _cache_files(bottleneck_dir):
  return sorted(os.path.relpath(os.path.join(root, name), bottleneck_dir)
                for root, _, names in os.walk(bottleneck_dir)
                for name in names if name.endswith('.txt'))


def test_files_are_named_and_formatted_as_the_original(image_dir, tf2_module,
                                                       tmp_path):
  module = _module(tf2_module)
  lists, splits, summary = _cache(image_dir, module, tmp_path / 'b')
  names = _cache_files(tmp_path / 'b')
  assert len(names) == 60 and summary.created == 60
  assert os.path.join('red', 'red_000.jpg_tiny~module.txt') in names
  text = (tmp_path / 'b' / 'red' / 'red_000.jpg_tiny~module.txt').read_text()
  assert '\n' not in text.strip()
  values = [float(x) for x in text.split(',')]  # The original's reader.
  assert len(values) == TINY_BOTTLENECK
  # The in-memory value is exactly what the file holds.
  path = os.path.join(image_dir, 'red', 'red_000.jpg')
  split = next(s for s in splits.values() if path in s.filenames)
  position = split.filenames.index(path)
  assert split.ground_truth[position] == lists.labels.index('red')
  np.testing.assert_array_equal(split.bottlenecks[position],
                                np.float32(values))


def test_second_run_reuses_everything(image_dir, tf2_module, tmp_path):
  module = _module(tf2_module)
  _, first, _ = _cache(image_dir, module, tmp_path / 'b')
  _, second, summary = _cache(image_dir, module, tmp_path / 'b')
  assert summary.created == 0 and summary.reused == 60
  assert summary.read_seconds > 0
  for split in images.SPLITS:
    np.testing.assert_array_equal(first[split].bottlenecks,
                                  second[split].bottlenecks)


@pytest.mark.parametrize('damage', ['', '1.0,2.0', 'nan,' * 7 + 'nan',
                                    'abc,def', '0.5,' * 20 + '0.5'])
def test_bad_cache_file_is_recomputed(image_dir, tf2_module, tmp_path,
                                      caplog, damage):
  module = _module(tf2_module)
  _cache(image_dir, module, tmp_path / 'b')
  bad = tmp_path / 'b' / 'green' / 'green_003.jpg_tiny~module.txt'
  good_text = bad.read_text()
  bad.write_text(damage)
  _, _, summary = _cache(image_dir, module, tmp_path / 'b')
  assert summary.created == 1 and summary.recomputed == 1
  # Alone, an image may differ from its batched self in the last digit.
  np.testing.assert_allclose(_values(bad.read_text()), _values(good_text),
                             rtol=1e-5)
  assert f'Recomputing bad bottleneck file {bad}' in caplog.text


def test_other_modules_cache_is_refused_with_the_fix(image_dir, tf2_module,
                                                     tmp_path):
  module = _module(tf2_module)
  _cache(image_dir, module, tmp_path / 'b')
  module.bottleneck_size = 16  # As if another module had the same name.
  with pytest.raises(PoetsError, match='have 8 values but this module makes '
                     '16.*--bottleneck_dir'):
    _cache(image_dir, module, tmp_path / 'b')


def test_interrupted_run_leaves_no_partial_file_and_resumes(
    image_dir, tf2_module, tmp_path, monkeypatch):
  module = _module(tf2_module)
  written = []
  real_write = files.atomic_write

  def dying_write(path, data):
    if len(written) == 25:
      written.append(None)
      raise KeyboardInterrupt  # Killed while writing the 26th file.
    real_write(path, data)
    written.append(path)

  monkeypatch.setattr(bottlenecks, 'atomic_write', dying_write)
  with pytest.raises(KeyboardInterrupt):
    _cache(image_dir, module, tmp_path / 'b')
  monkeypatch.setattr(bottlenecks, 'atomic_write', real_write)
  made = _cache_files(tmp_path / 'b')
  assert 25 <= len(made) < 60
  for name in made:
    values, problem = bottlenecks.read_bottleneck(str(tmp_path / 'b' / name))
    assert problem is None and values.size == TINY_BOTTLENECK
  _, _, summary = _cache(image_dir, module, tmp_path / 'b')
  assert summary.reused == len(made) and summary.created == 60 - len(made)


def test_undecodable_image_is_skipped_with_its_path(tmp_path, tf2_module,
                                                    caplog):
  image_dir = make_image_dir(tmp_path / 'p')
  broken = os.path.join(image_dir, 'red', 'broken.jpg')
  with open(broken, 'wb') as f:
    f.write(b'definitely not a jpeg')
  module = _module(tf2_module)
  _, splits, summary = _cache(image_dir, module, tmp_path / 'b')
  assert [path for path, _ in summary.failed] == [broken]
  assert summary.created == 60
  assert f'Skipping {broken}: Unknown image file format' in caplog.text
  assert all(broken not in s.filenames for s in splits.values())
  # The failed image's row is gone, and every other row still holds its own
  # image's bottleneck.
  for split in splits.values():
    assert len(split.bottlenecks) == len(split.filenames)
    for path, row in zip(split.filenames, split.bottlenecks):
      class_dir, name = os.path.relpath(path, image_dir).split(os.sep, 1)
      cache = bottlenecks.bottleneck_path(str(tmp_path / 'b'), class_dir,
                                          name, 'tiny~module')
      np.testing.assert_array_equal(row, bottlenecks.read_bottleneck(cache)[0])
