"""Tests for poets/core/image_listing.py: finding images, labels and the stable split."""

import hashlib
import os

import numpy as np
import pytest
import tensorflow as tf

from conftest import ODD_FILE_NAMES, encode, make_image_dir, solid_image
from poets import settings
from poets.core import image_decoding
from poets.core import image_listing
from poets.core import photo_decoding
from poets.errors import PoetsError


def test_labels_follow_the_original_rule():
  assert image_listing.label_for('Daisy') == 'daisy'
  assert image_listing.label_for('Sun--Flowers_2') == 'sun flowers 2'
  assert image_listing.label_for('roses') == 'roses'


def _original_split(hash_name, testing, validation):
  """The original retrain.py's rule, written out independently."""
  hashed = int(hashlib.sha1(hash_name.encode()).hexdigest(), 16)
  percentage = (hashed % (2**27)) * (100.0 / (2**27 - 1))
  if percentage < validation:
    return 'validation'
  if percentage < testing + validation:
    return 'testing'
  return 'training'


def test_split_matches_the_original_hash_rule():
  for i in range(300):
    name = f'photo_{i}.jpg'
    assert image_listing.which_split('daisy', name, 10, 10) == _original_split(
        f'daisy/{name}', 10, 10)


def test_split_ignores_nohash_suffix_and_is_roughly_proportional():
  assert (image_listing.which_split('a', 'x_nohash_1.jpg', 10,
                                    10) == image_listing.which_split(
                                        'a', 'x_nohash_2.jpg', 10, 10))
  splits = [
      image_listing.which_split('a', f'{i}.jpg', 10, 20) for i in range(2000)
  ]
  assert 0.15 < splits.count('validation') / 2000 < 0.25
  assert 0.06 < splits.count('testing') / 2000 < 0.14


def test_split_does_not_depend_on_how_the_folder_is_typed(tmp_path,
                                                          monkeypatch):
  make_image_dir(tmp_path / 'photos', per_class=30)
  monkeypatch.chdir(tmp_path)
  plain = image_listing.create_image_lists('photos', 10, 10)
  dotted = image_listing.create_image_lists('./photos/', 10, 10)
  absolute = image_listing.create_image_lists(str(tmp_path / 'photos'), 10, 10)
  for a, b, c in zip(plain.classes, dotted.classes, absolute.classes):
    assert a.training == b.training == c.training
    assert a.testing == b.testing == c.testing


def test_finds_images_in_any_case_nested_and_skips_hidden(tmp_path):
  root = tmp_path / 'photos'
  for name, colour in [('Tulips', (200, 0, 0)), ('Daisy', (0, 200, 0))]:
    (root / name / 'more').mkdir(parents=True)
    for i, file_name in enumerate(['a.JPG', 'b.jpeg', 'c.Png', 'more/d.jpg',
                                   'e.gif', '.hidden.jpg', 'notes.txt']):
      (root / name / file_name).write_bytes(
          encode(solid_image(colour, i), 'PNG'))
  (root / '.DS_Store').write_bytes(b'\0')
  lists = image_listing.create_image_lists(str(root), 0, 0)
  assert lists.labels == ['daisy', 'tulips']
  assert sorted(lists.classes[0].training) == sorted(
      ['a.JPG', 'b.jpeg', 'c.Png', os.path.join('more', 'd.jpg'), 'e.gif'])


def _all_images(image_class):
  return image_class.training + image_class.testing + image_class.validation


def test_any_name_the_file_system_allows_is_found_and_split(tmp_path):
  root = tmp_path / 'photos'
  make_image_dir(root, per_class=2)
  odd_class = root / os.fsdecode(b'caf\xe9 -%\n')
  odd_class.mkdir()
  for folder in (root / 'red', odd_class):
    for name in ODD_FILE_NAMES:
      (folder / name).write_bytes(b'decoding comes later')
  lists = image_listing.create_image_lists(str(root), 30, 30)
  by_dir = {c.dir: c for c in lists.classes}
  assert set(ODD_FILE_NAMES) <= set(_all_images(by_dir['red']))
  assert sorted(_all_images(by_dir[odd_class.name])) == sorted(
      ODD_FILE_NAMES)
  assert by_dir[odd_class.name].label == 'caf '


def test_links_are_followed_but_every_photo_counts_once(tmp_path, caplog):
  root = tmp_path / 'photos'
  make_image_dir(root, per_class=20)
  make_image_dir(tmp_path / 'elsewhere', per_class=5,
                 colours={'more_red': (200, 20, 20)})
  os.symlink(tmp_path / 'elsewhere' / 'more_red', root / 'red' / 'more')
  os.symlink('..', root / 'red' / 'up')  # A loop through every class.
  os.symlink('.', root / 'blue' / 'self')  # A loop into itself.
  os.symlink('green_000.jpg', root / 'green' / 'again.jpg')
  os.link(root / 'green' / 'green_001.jpg', root / 'green' / 'hard.jpg')
  os.symlink('.', root / 'all')  # A class folder that is every class.
  lists = image_listing.create_image_lists(str(root), 10, 10)
  found = {c.dir: _all_images(c) for c in lists.classes}
  assert {name: len(paths) for name, paths in found.items()} == {
      'blue': 20, 'green': 20, 'red': 25}
  assert sorted(found['green']) == [f'green_{i:03d}.jpg' for i in range(20)]
  assert sum(name.startswith('more') for name in found['red']) == 5
  for name, paths in found.items():
    real = {os.path.realpath(root / name / path) for path in paths}
    assert len(real) == len(paths)
  assert 'already found' in caplog.text


def test_pipes_and_devices_named_like_photos_are_skipped(tmp_path, caplog):
  # Reading one would wait for a writer, or never end.
  root = tmp_path / 'photos'
  make_image_dir(root, per_class=2)
  os.mkfifo(root / 'red' / 'pipe.jpg')
  os.symlink('/dev/zero', root / 'red' / 'zeros.jpg')
  lists = image_listing.create_image_lists(str(root), 0, 0)
  assert sorted(lists.classes[2].training) == ['red_000.jpg', 'red_001.jpg']
  assert caplog.text.count('not a regular file') == 2


def test_loose_photos_and_unreadable_formats_are_counted_in_one_line(
    tmp_path, caplog):
  make_image_dir(tmp_path)
  for name in ('loose.jpg', 'LOOSE2.png', 'loose3.heic', 'LICENSE.txt'):
    (tmp_path / name).write_bytes(b'x')
  for name in ('red/a.heic', 'red/b.HEIC', 'green/c.tif', 'blue/d.tiff',
               'blue/notes.txt', 'blue/.hidden.tif'):
    (tmp_path / name).write_bytes(b'x')
  image_lists = image_listing.create_image_lists(str(tmp_path), 10, 10)
  assert sum(len(c.training + c.validation + c.testing)
             for c in image_lists.classes) == 60
  skipped = [r.getMessage() for r in caplog.records
             if r.getMessage().startswith('Skipped photos')]
  assert skipped == [
      f'Skipped photos: 3 loose in {tmp_path} (only photos inside a class '
      'sub-folder are used; move them into one) and 4 in formats TensorFlow '
      'cannot decode (2 .heic, 1 .tif, 1 .tiff; convert them to JPEG or '
      'PNG).']


def test_a_clean_folder_says_nothing_of_skipped_photos(tmp_path, caplog):
  make_image_dir(tmp_path)
  (tmp_path / 'LICENSE.txt').write_text('As the flower photos have one.')
  image_listing.create_image_lists(str(tmp_path), 10, 10)
  assert 'Skipped photos' not in caplog.text


def test_missing_default_folder_tells_how_to_get_the_flowers(monkeypatch,
                                                             tmp_path):
  monkeypatch.chdir(tmp_path)
  with pytest.raises(PoetsError, match=r'flower_photos\.tgz.*tar xz -C '
                     r'tf_files.*any\s+folder of class sub-folders'):
    image_listing.create_image_lists('tf_files/flower_photos', 10, 10)
  with pytest.raises(PoetsError, match="'elsewhere' not found"):
    image_listing.create_image_lists('elsewhere', 10, 10)


def test_needs_two_classes(tmp_path):
  make_image_dir(tmp_path / 'one', colours={'red': (255, 0, 0)})
  (tmp_path / 'one' / 'empty').mkdir()
  with pytest.raises(PoetsError, match="at least 2 class folders.*only 'red'"):
    image_listing.create_image_lists(str(tmp_path / 'one'), 10, 10)


def test_labels_that_collide_are_refused(tmp_path):
  make_image_dir(tmp_path / 'p', colours={'Sun Flowers': (255, 0, 0),
                                          'sun_flowers': (250, 0, 0)}, per_class=2)
  with pytest.raises(PoetsError, match='both give the label'):
    image_listing.create_image_lists(str(tmp_path / 'p'), 10, 10)


def test_small_folder_warns(tmp_path, caplog):
  make_image_dir(tmp_path / 'p', per_class=3)
  image_listing.create_image_lists(str(tmp_path / 'p'), 10, 10)
  assert 'has less than 20 images' in caplog.text


def _run(tensor_fn, contents):
  graph = tf.Graph()
  with graph.as_default():
    placeholder = tf.compat.v1.placeholder(tf.string)
    output = tensor_fn(placeholder)
  with tf.compat.v1.Session(graph=graph) as session:
    return session.run(output, {placeholder: contents})


def test_decode_goes_by_content_and_scales_to_unit_range():
  pixels = solid_image((250, 10, 10), 0, size=10)
  png = encode(pixels, 'PNG')
  resized = _run(lambda c: image_decoding.decode_and_resize(c, 10, 10), png)
  np.testing.assert_allclose(resized, pixels / 255.0, atol=1e-6)
  gray = encode(pixels[:, :, 0], 'PNG')
  assert _run(lambda c: image_decoding.decode_and_resize(c, 4, 6),
              gray).shape == (4, 6, 3)


def test_distortions_keep_the_size_and_vary():
  contents = encode(solid_image((120, 120, 120), 0, size=40), 'JPEG')
  distortions = settings.Distortions(flip_left_right=True,
                                     random_crop=10,
                                     random_scale=20,
                                     random_brightness=30)
  assert distortions.enabled and not settings.Distortions().enabled
  graph = tf.Graph()
  with graph.as_default():
    seed = tf.compat.v1.placeholder(tf.int64, [2])
    output = image_decoding.decode_and_distort(tf.constant(contents), 16, 16,
                                               distortions, seed)
  with tf.compat.v1.Session(graph=graph) as session:
    first, again, other = [session.run(output, {seed: s})
                           for s in ([1, 2], [1, 2], [3, 4])]
  assert first.shape == (16, 16, 3)
  np.testing.assert_array_equal(first, again)
  assert not np.allclose(first, other)


def test_decode_in_batches_keeps_the_good_images_and_says_why_not_the_rest(
    tmp_path):
  folder = os.fsencode(tmp_path)
  red = solid_image((250, 10, 10), 0, size=8)
  blue = solid_image((10, 10, 250), 0, size=8)
  (tmp_path / 'red.png').write_bytes(encode(red, 'PNG'))
  with open(os.path.join(folder, b'bl\xffue.png'), 'wb') as f:  # Not UTF-8.
    f.write(encode(blue, 'PNG'))
  (tmp_path / 'damaged.jpg').write_bytes(b'not an image at all')
  paths = [str(tmp_path / 'red.png'), str(tmp_path / 'missing.jpg'),
           os.fsdecode(os.path.join(folder, b'bl\xffue.png')),
           str(tmp_path / 'damaged.jpg')]
  graph = tf.Graph()
  with graph.as_default():
    decoded = image_decoding.decode_in_batches(
        paths,
        lambda contents: image_decoding.decode_and_resize(contents, 8, 8),
        batch_size=1)
  with tf.compat.v1.Session(graph=graph) as session:
    batches = list(
        image_decoding.each_batch(session, [decoded.indices, decoded.images]))
    positions = [int(i) for indices, _ in batches for i in indices]
    failures = dict(decoded.failures(session, positions))
  assert positions == [0, 2]  # In order, one per batch of 1.
  np.testing.assert_allclose(batches[0][1][0], red / 255.0,
                             atol=1e-6)
  np.testing.assert_allclose(batches[1][1][0], blue / 255.0,
                             atol=1e-6)
  assert failures.keys() == {1, 3}
  assert failures[1] == photo_decoding.Failure('No such file or directory',
                                               unreadable=True)
  assert not failures[3].unreadable
  assert failures[3].reason.startswith('Unknown image file format.')


def test_a_link_into_another_class_keeps_its_photos_in_their_class(
    tmp_path, caplog):
  """daisy/r -> ../roses trained every rose as a daisy, and roses
  disappeared."""
  root = tmp_path / 'photos'
  make_image_dir(root, per_class=4)
  os.symlink('../red', root / 'blue' / 'r')
  os.symlink('../green/green_000.jpg', root / 'blue' / 'g.jpg')
  lists = image_listing.create_image_lists(str(root), 0, 0)
  found = {c.dir: sorted(_all_images(c)) for c in lists.classes}
  assert found == {colour: [f'{colour}_{i:03d}.jpg' for i in range(4)]
                   for colour in ('blue', 'green', 'red')}
  assert caplog.text.count('a link into the class folder') == 2


def test_an_unreadable_folder_is_reported(tmp_path, caplog, monkeypatch):
  root = tmp_path / 'photos'
  make_image_dir(root, per_class=3)
  make_image_dir(root / 'red', per_class=2, colours={'closed': (200, 0, 0)})
  scandir = os.scandir

  def denied(path='.'):
    if os.fspath(path).endswith('closed'):
      raise PermissionError(13, 'Permission denied', os.fspath(path))
    return scandir(path)

  monkeypatch.setattr(os, 'scandir', denied)
  lists = image_listing.create_image_lists(str(root), 0, 0)
  assert len(_all_images(lists.classes[2])) == 3
  assert (f'Cannot read the folder {root / "red" / "closed"} (Permission '
          'denied); its photos are left out.') in caplog.text


def test_a_huge_sparse_photo_is_skipped_before_reading(tmp_path, caplog):
  root = tmp_path / 'photos'
  make_image_dir(root, per_class=2)
  with open(root / 'red' / 'huge.jpg', 'wb') as f:
    f.truncate(60 * 2**30)  # Sparse: 60 GB that take no disk.
  lists = image_listing.create_image_lists(str(root), 0, 0)
  assert 'huge.jpg' not in _all_images(lists.classes[2])
  assert 'huge.jpg: 61,440 MiB, larger than any photo' in caplog.text
