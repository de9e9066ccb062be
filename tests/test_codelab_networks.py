"""Tests for poets/core/networks/codelab_networks.py: the codelab's frozen-graph networks.

Tiny frozen graphs with the original's tensor names (`input` ->
`MobilenetV1/Predictions/Reshape`, `Mul` -> `pool_3/_reshape`) stand in for
the real ones, packed as the original's archives in a temporary --model_dir.
Their features average-pool the image coarsely, so they see where pixels are
and a different resize gives different bottlenecks. One slow test uses the
real MobileNet archive that ships in tf_files/models.
"""

import io
import os
import shutil
import tarfile

import numpy as np
import pytest
import tensorflow as tf

from conftest import encode, make_image_dir
from poets import files
from poets import pipeline
from poets import settings
from poets.core import bottlenecks
from poets.core import frozen_graphs
from poets.core import image_decoding
from poets.core import image_listing
from poets.core import labeling
from poets.core import modules
from poets.core.networks import architectures
from poets.core.networks import codelab_networks
from poets.errors import PoetsError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHIPPED_ARCHIVE = os.path.join(ROOT, 'tf_files', 'models',
                               'mobilenet_v1_0.25_224_frozen.tgz')
FLOWERS = os.path.join(ROOT, '..', 'shared', 'data', 'flower_photos_sample')


def _tiny_graph(size, output_scope, output_name, output_size, batch,
                input_name='input', scale=1.0):
  """A frozen graph: [1, size, size, 3] -> 32x32 average pools -> a fixed
  projection to `output_size` values, reshaped to [batch, output_size]."""
  graph = tf.Graph()
  with graph.as_default():
    image = tf.compat.v1.placeholder(tf.float32, [1, size, size, 3],
                                     name=input_name)
    if input_name != 'input':  # Inception: its input Mul is not a placeholder.
      image = tf.multiply(image, 1.0, name='Mul')
    pooled = tf.nn.avg_pool2d(image, 32, 32, 'VALID')
    cells = (size // 32) ** 2 * 3
    weights = np.random.default_rng(3).normal(size=[cells, output_size])
    features = tf.reshape(pooled, [-1, cells]) @ tf.constant(
        (scale * weights).astype(np.float32))
    with graph.name_scope(output_scope + '/'):
      tf.reshape(features, [batch, output_size], name=output_name)
  return graph.as_graph_def().SerializeToString()


def _mobilenet_graph(scale=1.0):
  return _tiny_graph(224, 'MobilenetV1/Predictions', 'Reshape', 1001, -1,
                     scale=scale)


def _inception_graph():
  # Like the real one, it takes one image at a time (tensorflow#554).
  return _tiny_graph(299, 'pool_3', '_reshape', 2048, 1,
                     input_name='ResizeBilinear')


def _write_archive(path, members):
  """A .tgz of {name in the archive: bytes}."""
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with tarfile.open(path, 'w:gz') as archive:
    for name, data in members.items():
      info = tarfile.TarInfo(name)
      info.size = len(data)
      archive.addfile(info, io.BytesIO(data))
  return str(path)


def _mobilenet_members(folder='mobilenet_v1_0.25_224'):
  """As in the real archive: both graphs and the labels."""
  return {f'{folder}/frozen_graph.pb': _mobilenet_graph(),
          f'{folder}/quantized_graph.pb': _mobilenet_graph(scale=2.0),
          f'{folder}/labels.txt': b'background\ntench\n'}


@pytest.fixture
def model_dir(tmp_path):
  """A --model_dir holding the tiny MobileNet 0.25 224 archive."""
  models = tmp_path / 'models'
  _write_archive(models / 'mobilenet_v1_0.25_224_frozen.tgz',
                 _mobilenet_members())
  return str(models)


@pytest.fixture
def offline(monkeypatch):
  """Downloads go to a port nothing listens on."""
  monkeypatch.setattr(codelab_networks, 'DOWNLOAD_ROOT', 'http://127.0.0.1:9/')


def _features(spec, batch):
  graph = tf.Graph()
  with graph.as_default():
    module = modules.load_module(spec)
    pixels = tf.compat.v1.placeholder(tf.float32,
                                      [None, *module.image_size, 3])
    output = module.apply(pixels)
  with tf.compat.v1.Session(graph=graph) as session:
    return module, session.run(output, {pixels: batch})


def _random_batch(count, size):
  return np.random.default_rng(1).random([count, size, size, 3],
                                         dtype=np.float32)


def _leftovers(folder):
  return [name for name in os.listdir(folder) if name.startswith('.')]


def test_names_in_any_case_and_quantized_use_the_quantized_graph(
    model_dir, offline):
  frozen = modules.resolve_module('mobilenet_0.25_224', '', model_dir)
  quantized = modules.resolve_module('MobileNet_0.25_224_Quantized', '',
                                     model_dir)
  assert frozen.handle == os.path.join(model_dir, 'mobilenet_v1_0.25_224',
                                       'frozen_graph.pb')
  assert quantized.handle == os.path.join(model_dir, 'mobilenet_v1_0.25_224',
                                          'quantized_graph.pb')
  # Bottleneck files carry the name as typed, as the original's did.
  assert quantized.name == 'MobileNet_0.25_224_Quantized'
  batch = _random_batch(2, 224)
  module, frozen_values = _features(frozen, batch)
  _, quantized_values = _features(quantized, batch)
  assert module.image_size == (224, 224) and module.bottleneck_size == 1001
  assert frozen_values.shape == (2, 1001)
  np.testing.assert_allclose(quantized_values, 2 * frozen_values, rtol=1e-4,
                             atol=1e-4)


def test_archive_is_unpacked_beside_it_as_the_original_did(model_dir,
                                                           offline):
  modules.resolve_module('mobilenet_0.25_224', '', model_dir)
  assert sorted(os.listdir(os.path.join(model_dir, 'mobilenet_v1_0.25_224'))
                ) == ['frozen_graph.pb', 'labels.txt', 'quantized_graph.pb']
  assert not _leftovers(model_dir)


def test_unpacked_folder_is_used_without_its_archive(model_dir, offline):
  modules.resolve_module('mobilenet_0.25_224', '', model_dir)
  os.remove(os.path.join(model_dir, 'mobilenet_v1_0.25_224_frozen.tgz'))
  spec = modules.resolve_module('mobilenet_0.25_224', '', model_dir)
  assert os.path.exists(spec.handle)
  assert _features(spec, _random_batch(1, 224))[1].shape == (1, 1001)


def test_a_folder_missing_the_graph_gets_it_from_the_archive(model_dir,
                                                             offline):
  """A partly unpacked folder is completed; what is there is kept."""
  folder = os.path.join(model_dir, 'mobilenet_v1_0.25_224')
  os.makedirs(folder)
  with open(os.path.join(folder, 'labels.txt'), 'w') as f:
    f.write('mine\n')
  spec = modules.resolve_module('mobilenet_0.25_224', '', model_dir)
  assert os.path.exists(spec.handle)
  with open(os.path.join(folder, 'labels.txt')) as f:
    assert f.read() == 'mine\n'


def test_missing_archive_is_downloaded_from_the_original_url(
    http_server, tmp_path, monkeypatch):
  served, url = http_server
  _write_archive(served / 'mobilenet_v1_0.50_160_frozen.tgz',
                 _mobilenet_members('mobilenet_v1_0.50_160'))
  monkeypatch.setattr(codelab_networks, 'DOWNLOAD_ROOT', f'{url}/')
  model_dir = str(tmp_path / 'models')
  spec = modules.resolve_module('mobilenet_0.50_160', '', model_dir)
  assert sorted(os.listdir(model_dir)) == [
      'mobilenet_v1_0.50_160', 'mobilenet_v1_0.50_160_frozen.tgz']
  assert spec.handle == os.path.join(model_dir, 'mobilenet_v1_0.50_160',
                                     'frozen_graph.pb')
  assert spec.network.image_size == 160


def test_offline_without_the_archive_one_line_says_what_to_put_where(
    tmp_path, offline):
  model_dir = str(tmp_path / 'models')
  with pytest.raises(PoetsError) as error:
    modules.resolve_module('mobilenet_0.50_224', '', model_dir)
  message = str(error.value)
  assert '\n' not in message
  assert (f'put mobilenet_v1_0.50_224_frozen.tgz (from http://127.0.0.1:9/'
          f'mobilenet_v1_0.50_224_frozen.tgz) in {model_dir}/') in message
  assert not os.path.exists(model_dir) or not os.listdir(model_dir)


def test_the_shipped_archive_is_found_whatever_model_dir_says(
    tmp_path, offline, monkeypatch, caplog):
  """Unpacked from where it ships into the user's --model_dir, offline;
  nothing of theirs replaced, nothing left beside the shipped archive."""
  monkeypatch.chdir(tmp_path)
  (tmp_path / 'my_models').mkdir()
  (tmp_path / 'my_models' / 'notes.txt').write_text('mine\n')
  shipped_before = sorted(os.listdir(os.path.dirname(SHIPPED_ARCHIVE)))
  spec = modules.resolve_module('mobilenet_0.25_224', '', 'my_models')
  assert spec.handle == os.path.join('my_models', 'mobilenet_v1_0.25_224',
                                     'frozen_graph.pb')
  assert os.path.getsize(spec.handle) > 1_000_000  # The real graph.
  assert sorted(os.listdir('my_models')) == ['mobilenet_v1_0.25_224',
                                             'notes.txt']
  assert (tmp_path / 'my_models' / 'notes.txt').read_text() == 'mine\n'
  assert sorted(os.listdir(os.path.dirname(SHIPPED_ARCHIVE))) == (
      shipped_before)
  assert f'Unpacking the shipped {SHIPPED_ARCHIVE} into my_models.' in (
      caplog.text)


def test_inception_archive_unpacks_at_the_top_of_model_dir(tmp_path, offline):
  model_dir = str(tmp_path / 'models')
  _write_archive(os.path.join(model_dir, 'inception-2015-12-05.tgz'),
                 {'classify_image_graph_def.pb': _inception_graph(),
                  'LICENSE': b'Apache'})
  spec = modules.resolve_module('Inception_V3', '', model_dir)
  assert spec.handle == os.path.join(model_dir, 'classify_image_graph_def.pb')
  assert os.path.exists(os.path.join(model_dir, 'LICENSE'))


def test_inception_takes_batches_though_its_graph_takes_one_image(
    tmp_path, offline):
  model_dir = str(tmp_path / 'models')
  _write_archive(os.path.join(model_dir, 'inception-2015-12-05.tgz'),
                 {'classify_image_graph_def.pb': _inception_graph()})
  spec = modules.resolve_module('inception_v3', '', model_dir)
  batch = _random_batch(3, 299)
  module, values = _features(spec, batch)
  assert module.image_size == (299, 299) and values.shape == (3, 2048)
  _, one = _features(spec, batch[1:2])
  np.testing.assert_allclose(values[1], one[0], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('member', ['../escaped.pb', '/tmp/absolute.pb'])
def test_hostile_archive_is_refused_and_nothing_is_left(tmp_path, offline,
                                                        member):
  model_dir = tmp_path / 'models'
  _write_archive(model_dir / 'mobilenet_v1_0.25_224_frozen.tgz',
                 {'mobilenet_v1_0.25_224/frozen_graph.pb': _mobilenet_graph(),
                  member: b'x'})
  with pytest.raises(PoetsError, match='Refused the module archive.*'
                     'outside'):
    modules.resolve_module('mobilenet_0.25_224', '', str(model_dir))
  assert os.listdir(model_dir) == ['mobilenet_v1_0.25_224_frozen.tgz']
  assert not (tmp_path / 'escaped.pb').exists()


def test_damaged_archive_is_one_line(tmp_path, offline):
  model_dir = tmp_path / 'models'
  model_dir.mkdir()
  (model_dir / 'mobilenet_v1_0.25_224_frozen.tgz').write_bytes(b'\x1f\x8bjunk')
  with pytest.raises(PoetsError, match='mobilenet_v1_0.25_224_frozen.tgz is '
                     'not a readable .tgz archive'):
    modules.resolve_module('mobilenet_0.25_224', '', str(model_dir))


# What the codelab's scripts/retrain.py did, op for op, with its own
# constants: create_model_graph, add_jpeg_decoding, run_bottleneck_on_image
# and the ','.join(str(x)) it wrote.
ORIGINAL_MOBILENET = dict(bottleneck='MobilenetV1/Predictions/Reshape:0',
                          input='input:0', size=224, mean=127.5, std=127.5)


def original_bottleneck_text(graph_path, jpeg, model_info=None):
  info = model_info or ORIGINAL_MOBILENET
  with tf.Graph().as_default() as graph:
    graph_def = tf.compat.v1.GraphDef()
    with open(graph_path, 'rb') as f:
      graph_def.ParseFromString(f.read())
    bottleneck_tensor, resized_input_tensor = tf.compat.v1.import_graph_def(
        graph_def, name='', return_elements=[info['bottleneck'],
                                             info['input']])
    jpeg_data = tf.compat.v1.placeholder(tf.string, name='DecodeJPGInput')
    decoded_image = tf.image.decode_jpeg(jpeg_data, channels=3)
    decoded_image_as_float = tf.cast(decoded_image, dtype=tf.float32)
    decoded_image_4d = tf.expand_dims(decoded_image_as_float, 0)
    resize_shape = tf.stack([info['size'], info['size']])
    resize_shape_as_int = tf.cast(resize_shape, dtype=tf.int32)
    resized_image = tf.compat.v1.image.resize_bilinear(decoded_image_4d,
                                                       resize_shape_as_int)
    offset_image = tf.subtract(resized_image, info['mean'])
    mul_image = tf.multiply(offset_image, 1.0 / info['std'])
  with tf.compat.v1.Session(graph=graph) as sess:
    resized_input_values = sess.run(mul_image, {jpeg_data: jpeg})
    bottleneck_values = sess.run(bottleneck_tensor,
                                 {resized_input_tensor: resized_input_values})
  return ','.join(str(x) for x in np.squeeze(bottleneck_values))


def _photo_dir(root, per_class=3):
  """Photos with structure (noise at varied sizes), so the resize matters."""
  rng = np.random.default_rng(5)
  for name in ('cats', 'dogs'):
    os.makedirs(root / name)
    for i in range(per_class):
      shape = [int(rng.integers(90, 400)), int(rng.integers(90, 400)), 3]
      pixels = rng.integers(0, 256, size=shape).astype(np.uint8)
      (root / name / f'{name}_{i}.jpg').write_bytes(encode(pixels))
  return str(root)


def _cache(image_dir, spec, bottleneck_dir):
  lists = image_listing.create_image_lists(image_dir, 10, 10)
  with tf.Graph().as_default():
    module = modules.load_module(spec)
  return lists, *bottlenecks.cache_bottlenecks(lists, module,
                                               str(bottleneck_dir))


def _original_cache(image_dir, graph_path, bottleneck_dir, architecture):
  """Writes the original's cache files for every photo; returns their paths."""
  written = []
  for class_dir in sorted(os.listdir(image_dir)):
    for name in sorted(os.listdir(os.path.join(image_dir, class_dir))):
      with open(os.path.join(image_dir, class_dir, name), 'rb') as f:
        text = original_bottleneck_text(graph_path, f.read())
      # The original's get_bottleneck_path: <image>_<architecture>.txt.
      path = os.path.join(bottleneck_dir, class_dir,
                          f'{name}_{architecture}.txt')
      os.makedirs(os.path.dirname(path), exist_ok=True)
      with open(path, 'w') as f:
        f.write(text)
      written.append(path)
  return written


def _values(path):
  with open(path) as f:
    return np.array([float(x) for x in f.read().split(',')])


@pytest.mark.parametrize('architecture', ['mobilenet_0.25_224',
                                          'MobileNet_0.25_224'])
def test_our_cache_files_agree_with_the_originals(model_dir, tmp_path,
                                                  offline, architecture):
  image_dir = _photo_dir(tmp_path / 'photos')
  spec = modules.resolve_module(architecture, '', model_dir)
  original = _original_cache(image_dir, spec.handle, tmp_path / 'original',
                             architecture)
  _cache(image_dir, spec, tmp_path / 'ours')
  for path in original:
    ours = path.replace(str(tmp_path / 'original'), str(tmp_path / 'ours'))
    np.testing.assert_allclose(_values(ours), _values(path), rtol=1e-4,
                               atol=1e-4)


def test_the_agreement_check_tells_resize_methods_apart(model_dir, tmp_path,
                                                        offline):
  """This project's own resize (half-pixel centres) would not agree."""
  image_dir = _photo_dir(tmp_path / 'photos', per_class=1)
  spec = modules.resolve_module('mobilenet_0.25_224', '', model_dir)
  photo = os.path.join(image_dir, 'cats', 'cats_0.jpg')
  with open(photo, 'rb') as f:
    jpeg = f.read()
  original = np.array(original_bottleneck_text(spec.handle, jpeg).split(','),
                      np.float32)
  graph = tf.Graph()
  with graph.as_default():
    module = modules.load_module(spec)
    own_resize = module.apply(
        image_decoding.decode_and_resize(jpeg, 224, 224)[None])
  with tf.compat.v1.Session(graph=graph) as session:
    assert np.abs(session.run(own_resize)[0] - original).max() > 1e-3


def test_the_originals_cache_is_read_not_remade(model_dir, tmp_path, offline):
  image_dir = _photo_dir(tmp_path / 'photos')
  spec = modules.resolve_module('mobilenet_0.25_224', '', model_dir)
  original = _original_cache(image_dir, spec.handle, tmp_path / 'b',
                             'mobilenet_0.25_224')
  _, splits, summary = _cache(image_dir, spec, tmp_path / 'b')
  assert summary.created == 0 and summary.reused == len(original) == 6
  path = os.path.join(image_dir, 'dogs', 'dogs_2.jpg')
  split = next(s for s in splits.values() if path in s.filenames)
  np.testing.assert_array_equal(
      split.bottlenecks[split.filenames.index(path)],
      _values(os.path.join(tmp_path, 'b', 'dogs',
                           'dogs_2.jpg_mobilenet_0.25_224.txt')).astype(
                               np.float32))


@pytest.mark.parametrize('architecture', ['mobilenet_0.25_224',
                                          'inception_v3'])
def test_exported_graph_labels_with_label_images_default_flags(
    tmp_path, offline, architecture):
  model_dir = tmp_path / 'models'
  _write_archive(model_dir / 'mobilenet_v1_0.25_224_frozen.tgz',
                 _mobilenet_members())
  _write_archive(model_dir / 'inception-2015-12-05.tgz',
                 {'classify_image_graph_def.pb': _inception_graph()})
  image_dir = make_image_dir(tmp_path / 'photos', per_class=20)
  config = settings.RetrainSettings(
      image_dir=image_dir, output_graph=str(tmp_path / 'g.pb'),
      output_labels=str(tmp_path / 'labels.txt'),
      bottleneck_dir=str(tmp_path / 'b'), architecture=architecture,
      model_dir=str(model_dir), how_many_training_steps=300,
      eval_step_interval=100, summaries_dir=str(tmp_path / 's'),
      checkpoint_path=str(tmp_path / 'c' / 'x'), random_seed=0)
  pipeline.run(config)
  graph = frozen_graphs.import_graph(
      frozen_graphs.load_graph_def(config.output_graph), config.output_graph)
  size = 224 if architecture.startswith('mobilenet') else 299
  assert [str(layer) for layer in frozen_graphs.input_candidates(graph)] == [
      f'Placeholder float32 [?,{size},{size},3]']
  photos = [os.path.join(image_dir, colour, f'{colour}_{i:03d}.jpg')
            for colour in ('blue', 'green', 'red') for i in (0, 7)]
  run = labeling.label_images(
      settings.LabelConfig(graph=config.output_graph,
                           labels=config.output_labels,
                           images=photos))
  assert [r.predictions[0].label for r in run.results] == [
      'blue', 'blue', 'green', 'green', 'red', 'red']
  assert not run.warnings


def test_the_shipped_archive_is_where_the_default_model_dir_finds_it():
  network = architectures.codelab_network(architectures.SHIPPED)
  default_model_dir = settings.RetrainSettings().model_dir
  assert os.path.join(ROOT, default_model_dir, network.archive) == (
      SHIPPED_ARCHIVE)
  assert os.path.getsize(SHIPPED_ARCHIVE) > 2_000_000
  assert os.path.exists(os.path.join(os.path.dirname(SHIPPED_ARCHIVE),
                                     'README.md'))


@pytest.mark.slow
@pytest.mark.skipif(not os.path.isdir(FLOWERS),
                    reason='../shared/data/flower_photos_sample is absent')
@pytest.mark.parametrize('architecture', ['mobilenet_0.25_224',
                                          'mobilenet_0.25_224_quantized'])
def test_real_mobilenet_agrees_with_the_original_on_real_photos(
    tmp_path, offline, architecture):
  model_dir = tmp_path / 'models'
  model_dir.mkdir()
  shutil.copy(SHIPPED_ARCHIVE, model_dir)
  image_dir = tmp_path / 'photos'
  for label in ('daisy', 'roses'):
    os.makedirs(image_dir / label)
    for name in sorted(os.listdir(os.path.join(FLOWERS, label)))[:4]:
      shutil.copy(os.path.join(FLOWERS, label, name), image_dir / label)
  spec = modules.resolve_module(architecture, '', str(model_dir))
  original = _original_cache(str(image_dir), spec.handle,
                             tmp_path / 'original', architecture)
  _cache(str(image_dir), spec, tmp_path / 'ours')
  for path in original:
    ours = _values(path.replace(str(tmp_path / 'original'),
                                str(tmp_path / 'ours')))
    assert ours.size == 1001
    np.testing.assert_allclose(ours, _values(path), rtol=1e-4, atol=1e-4)


def test_a_page_served_instead_of_the_archive_is_not_kept(
    http_server, tmp_path, monkeypatch):
  """An HTML login page served with status 200 was kept as the .tgz and
  never downloaded again."""
  served, url = http_server
  (served / 'mobilenet_v1_0.50_160_frozen.tgz').write_text(
      '<html><body>Sign in</body></html>')
  monkeypatch.setattr(codelab_networks, 'DOWNLOAD_ROOT', f'{url}/')
  model_dir = tmp_path / 'models'
  with pytest.raises(PoetsError, match='could not be downloaded \\(the '
                     'server sent a web page, not the archive\\)'):
    modules.resolve_module('mobilenet_0.50_160', '', str(model_dir))
  assert not model_dir.exists() or not os.listdir(model_dir)
  _write_archive(served / 'mobilenet_v1_0.50_160_frozen.tgz',
                 _mobilenet_members('mobilenet_v1_0.50_160'))
  modules.resolve_module('mobilenet_0.50_160', '', str(model_dir))


def test_a_refused_download_leaves_nothing(http_server, tmp_path,
                                           monkeypatch):
  served, url = http_server
  _write_archive(served / 'mobilenet_v1_0.50_160_frozen.tgz',
                 _mobilenet_members('mobilenet_v1_0.50_160'))
  monkeypatch.setattr(codelab_networks, 'DOWNLOAD_ROOT', f'{url}/')
  monkeypatch.setattr(files, 'UNPACKED_BYTES', 100)
  model_dir = tmp_path / 'models'
  with pytest.raises(PoetsError, match='it unpacks to more than'):
    modules.resolve_module('mobilenet_0.50_160', '', str(model_dir))
  assert os.listdir(model_dir) == []
