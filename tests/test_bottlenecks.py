"""Tests for poets/core/bottlenecks.py: the text cache and batched computing."""

import os

import numpy as np
import pytest
import tensorflow as tf

from conftest import TINY_BOTTLENECK, make_image_dir
from poets import files
from poets.core import bottlenecks
from poets.core import cache_index
from poets.core import image_listing
from poets.core import modules
from poets.errors import PoetsError


def _module(path):
  with tf.Graph().as_default():
    return modules.load_module(modules.ModuleSpec(path, 'tiny~module'))


def _cache(image_dir, module, bottleneck_dir):
  lists = image_listing.create_image_lists(image_dir, 10, 10)
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
  for split in image_listing.SPLITS:
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


def _index(bottleneck_dir):
  return cache_index.index_path(str(bottleneck_dir), 'tiny~module')


def _row(splits, image_dir, class_dir, name):
  path = os.path.join(image_dir, class_dir, name)
  split = next(s for s in splits.values() if path in s.filenames)
  return split.bottlenecks[split.filenames.index(path)]


def _warm(image_dir, module, bottleneck_dir):
  """A warm run that finds the index settled: a run straight after the one
  that wrote it may re-parse files changed in the index's clock tick."""
  _cache(image_dir, module, bottleneck_dir)
  return _cache(image_dir, module, bottleneck_dir)


def test_warm_run_copies_the_index_instead_of_parsing(
    image_dir, tf2_module, tmp_path, monkeypatch):
  module = _module(tf2_module)
  _, first, cold = _cache(image_dir, module, tmp_path / 'b')
  assert cold.indexed == 0 and os.path.isfile(_index(tmp_path / 'b'))
  _warm(image_dir, module, tmp_path / 'b')
  # The index holds exactly the values: the text is not even read.
  monkeypatch.setattr(bottlenecks, '_parse_together', None)
  monkeypatch.setattr(bottlenecks, 'read_bottleneck', None)
  written = os.stat(_index(tmp_path / 'b')).st_mtime_ns
  _, second, summary = _cache(image_dir, module, tmp_path / 'b')
  assert summary.indexed == summary.reused == 60 and summary.created == 0
  assert os.stat(_index(tmp_path / 'b')).st_mtime_ns == written  # Unchanged.
  for split in image_listing.SPLITS:
    np.testing.assert_array_equal(first[split].bottlenecks,
                                  second[split].bottlenecks)


def _edit_by_hand(path):
  """Changes one digit in place (same size, same inode), as an editor would
  some seconds before the next run."""
  text = path.read_text()
  digit = next(i for i, c in enumerate(text) if c.isdigit())
  path.write_text(text[:digit] + str((int(text[digit]) + 1) % 10) +
                  text[digit + 1:])
  before = os.stat(path).st_mtime_ns - 10**10
  os.utime(path, ns=(before, before))
  return bottlenecks.read_bottleneck(str(path))[0]


def test_hand_edited_cache_file_wins_over_the_index(image_dir, tf2_module,
                                                    tmp_path):
  module = _module(tf2_module)
  _warm(image_dir, module, tmp_path / 'b')
  edited = tmp_path / 'b' / 'red' / 'red_004.jpg_tiny~module.txt'
  new_values = _edit_by_hand(edited)
  _, splits, summary = _cache(image_dir, module, tmp_path / 'b')
  assert summary.indexed == 59 and summary.reused == 60
  np.testing.assert_array_equal(
      _row(splits, image_dir, 'red', 'red_004.jpg'), new_values)
  # The index now holds the new values.
  _, splits, summary = _cache(image_dir, module, tmp_path / 'b')
  assert summary.indexed == 60
  np.testing.assert_array_equal(
      _row(splits, image_dir, 'red', 'red_004.jpg'), new_values)


@pytest.mark.parametrize('damage', ['deleted', 'empty', 'garbage',
                                    'truncated', 'other module'])
def test_damaged_or_missing_index_is_ignored_and_rewritten(
    image_dir, tf2_module, tmp_path, caplog, damage):
  module = _module(tf2_module)
  _, first, _ = _warm(image_dir, module, tmp_path / 'b')
  index = _index(tmp_path / 'b')
  size = os.path.getsize(index)
  if damage == 'deleted':
    os.remove(index)
  elif damage == 'other module':  # A valid index of 16-value bottlenecks.
    cache_index.write(index, np.ones([1, 16], np.float32), np.array([0]),
                      [b'red/red_000.jpg_tiny~module.txt'],
                      np.zeros(1, cache_index.IDENTITY), None,
                      str(tmp_path / 'b'))
  else:
    data = {'empty': b'', 'garbage': b'\x93NUMPY nonsense' * 50}.get(damage)
    with open(index, 'r+b') as f:
      if data is None:
        f.truncate(size - 100)
      else:
        f.truncate(0)
        f.write(data)
  _, second, summary = _cache(image_dir, module, tmp_path / 'b')
  assert summary.indexed == 0 and summary.reused == 60
  for split in image_listing.SPLITS:
    np.testing.assert_array_equal(first[split].bottlenecks,
                                  second[split].bottlenecks)
  warnings = caplog.text.count('Ignoring the bottleneck index')
  assert warnings == (0 if damage == 'deleted' else 1)
  _, _, summary = _cache(image_dir, module, tmp_path / 'b')
  assert summary.indexed == 60  # Written again.


def test_run_on_a_subset_keeps_the_other_files_in_the_index(
    image_dir, tf2_module, tmp_path):
  module = _module(tf2_module)
  _warm(image_dir, module, tmp_path / 'b')
  subset = image_listing.limit_training_images(
      image_listing.create_image_lists(image_dir, 10, 10), 2)
  chosen = list(bottlenecks._entries(subset, str(tmp_path / 'b'),
                                     'tiny~module'))
  _edit_by_hand(tmp_path / 'b' / os.path.relpath(chosen[0].cache_path,
                                                 tmp_path / 'b'))
  _, summary = bottlenecks.cache_bottlenecks(subset, module,
                                             str(tmp_path / 'b'))
  assert summary.reused == len(chosen) < 60
  assert summary.indexed == len(chosen) - 1  # The index was written again.
  _, _, summary = _cache(image_dir, module, tmp_path / 'b')
  assert summary.indexed == 60


def test_index_never_passes_a_bad_value(image_dir, tf2_module, tmp_path):
  module = _module(tf2_module)
  _, first, _ = _warm(image_dir, module, tmp_path / 'b')
  # A text file damaged since it was indexed is made again.
  damaged = tmp_path / 'b' / 'blue' / 'blue_002.jpg_tiny~module.txt'
  damaged.write_text('nan,' * (TINY_BOTTLENECK - 1) + 'nan')
  # A damaged value inside the index is read from its text file instead.
  np.load(_index(tmp_path / 'b'), mmap_mode='r+')[0] = np.nan
  _, second, summary = _cache(image_dir, module, tmp_path / 'b')
  assert summary.recomputed == 1 and summary.indexed == 58
  assert np.isfinite(bottlenecks.read_bottleneck(str(damaged))[0]).all()
  for split in image_listing.SPLITS:
    np.testing.assert_allclose(first[split].bottlenecks,
                               second[split].bottlenecks, rtol=1e-5)


def test_index_that_cannot_be_written_costs_a_warning(image_dir, tf2_module,
                                                      tmp_path, monkeypatch,
                                                      caplog):
  def full_disk(path, mode='wb'):
    raise OSError(28, 'No space left on device')

  monkeypatch.setattr(cache_index, 'atomic_file', full_disk)
  module = _module(tf2_module)
  _, _, summary = _cache(image_dir, module, tmp_path / 'b')
  assert summary.created == 60 and not os.path.exists(_index(tmp_path / 'b'))
  assert ('Could not write the bottleneck index '
          f'{_index(tmp_path / "b")} (No space left on device)') in caplog.text


def test_index_replaced_by_another_run_meanwhile_is_read_whole(
    image_dir, tf2_module, tmp_path, monkeypatch):
  module = _module(tf2_module)
  _, first, _ = _warm(image_dir, module, tmp_path / 'b')
  real_take = cache_index.take

  def take_after_a_replacement(index, *args):
    # Another run's atomic replace, between this run's opening and reading.
    files.atomic_write(_index(tmp_path / 'b'), b'another run\'s index')
    return real_take(index, *args)

  monkeypatch.setattr(cache_index, 'take', take_after_a_replacement)
  _, second, summary = _cache(image_dir, module, tmp_path / 'b')
  assert summary.indexed == 60
  for split in image_listing.SPLITS:
    np.testing.assert_array_equal(first[split].bottlenecks,
                                  second[split].bottlenecks)
