"""Tests for poets/core/modules.py: resolving handles, reading sizes, and
loading in graph mode."""

import contextlib
import dataclasses
import hashlib
import importlib
import io
import os
import shutil
import tarfile

import numpy as np
import pytest
import tensorflow as tf

from tensorflow_hub import registry

from conftest import TINY_BOTTLENECK, TINY_SIZE
from conftest import make_tf1_hub_module, make_tf2_module
from poets.core import modules
from poets.core.networks import architectures
from poets.errors import PoetsError


def test_architecture_and_module_together_is_an_error():
  with pytest.raises(PoetsError, match='not both'):
    modules.resolve_module('mobilenet_0.50_224', '/some/module', 'models')


def test_unknown_architecture_is_one_line_listing_the_choices():
  with pytest.raises(PoetsError) as error:
    modules.resolve_module('mobilenet_0.3_224', '', 'models')
  message = str(error.value)
  assert '\n' not in message
  for choice in ('efficientnet_lite0', 'efficientnet_lite2',
                 'mobilenet_<1.0|0.75|0.50|0.25>_<224|192|160|128>'
                 '[_quantized]', 'inception_v3', '--tfhub_module'):
    assert choice in message


def test_embedded_names_in_any_case_keep_the_typed_name_for_files(
    lite0_dir):
  spec = modules.resolve_module('EfficientNet_Lite0', '',
                                os.path.dirname(lite0_dir))
  assert spec.handle == lite0_dir  # The module built under its own name.
  assert spec.name == 'EfficientNet_Lite0'


def test_module_name_in_files_replaces_separators():
  spec = modules.resolve_module(
      '', 'https://tfhub.dev/google/imagenet/x/feature_vector/4', 'm')
  assert spec.name == 'https~tfhub.dev~google~imagenet~x~feature_vector~4'


def _features(spec, batch, **kwargs):
  graph = tf.Graph()
  with graph.as_default():
    module = modules.load_module(dataclasses.replace(spec, **kwargs))
    images = tf.compat.v1.placeholder(tf.float32, [None, *module.image_size,
                                                   3])
    output = module.apply(images)
    init = tf.compat.v1.global_variables_initializer()
  with tf.compat.v1.Session(graph=graph) as session:
    session.run(init)
    return module, session.run(output, {images: batch})


@pytest.mark.parametrize('fixture', ['tf2_module', 'tf1_hub_module'])
def test_both_formats_load_in_graph_mode_with_sizes_from_the_signature(
    fixture, request):
  path = request.getfixturevalue(fixture)
  batch = np.random.default_rng(0).random([2, TINY_SIZE, TINY_SIZE, 3],
                                          dtype=np.float32)
  module, features = _features(modules.ModuleSpec(path, 'tiny'), batch)
  assert module.image_size == (TINY_SIZE, TINY_SIZE)
  assert module.bottleneck_size == TINY_BOTTLENECK
  assert features.shape == (2, TINY_BOTTLENECK)
  np.testing.assert_allclose(features[:, :3], 10 * batch.mean(axis=(1, 2)),
                             rtol=1e-5)


@contextlib.contextmanager
def _nothing_loaded(monkeypatch):
  """Fails if a module is loaded, or anything added to the default graph."""
  def refuse(*args, **kwargs):
    raise AssertionError('the module was loaded')

  with monkeypatch.context() as patch:
    patch.setattr(modules.hub, 'load', refuse)
    patch.setattr(tf.compat.v1, 'import_graph_def', refuse)
    graph = tf.Graph()
    with graph.as_default():
      yield
  assert not graph.get_operations()


@pytest.mark.parametrize('make', [make_tf2_module, make_tf1_hub_module])
@pytest.mark.parametrize('size', [TINY_SIZE, 24])
def test_sizes_are_read_from_the_files_without_loading(make, size, tmp_path,
                                                       monkeypatch):
  path = make(tmp_path / 'module', size=size)
  with _nothing_loaded(monkeypatch):
    info = modules.module_info(modules.ModuleSpec(path, 'tiny'))
  assert info.image_size == (size, size)
  assert info.bottleneck_size == TINY_BOTTLENECK


def _codelab_stand_in(path, node_names):
  """A GraphDef file holding only nodes of these names: all the sizes need."""
  graph_def = tf.compat.v1.GraphDef()
  for name in node_names:
    graph_def.node.add(name=name, op='NoOp')
  path.write_bytes(graph_def.SerializeToString())
  return str(path)


def test_codelab_sizes_come_from_the_name_and_a_wrong_graph_is_named_early(
    tmp_path, monkeypatch):
  network = architectures.codelab_network('mobilenet_0.50_160')
  good = _codelab_stand_in(tmp_path / 'good.pb', [
      'input', 'MobilenetV1/Predictions/Reshape'])
  wrong = _codelab_stand_in(tmp_path / 'wrong.pb', ['input'])
  with _nothing_loaded(monkeypatch):
    info = modules.module_info(modules.ModuleSpec(good, 'm', network=network))
    with pytest.raises(PoetsError, match='has no tensor MobilenetV1'):
      modules.module_info(modules.ModuleSpec(wrong, 'm', network=network))
  assert info.image_size == (160, 160) and info.bottleneck_size == 1001


def test_unfixed_image_size_needs_the_override(tmp_path):
  class Flexible(tf.Module):

    @tf.function(input_signature=[tf.TensorSpec([None, None, None, 3],
                                                tf.float32)])
    def __call__(self, images):
      return tf.reduce_mean(images, axis=[1, 2])

  tf.saved_model.save(Flexible(), str(tmp_path / 'flexible'))
  spec = modules.ModuleSpec(str(tmp_path / 'flexible'), 'flexible')
  with tf.Graph().as_default(), pytest.raises(PoetsError,
                                              match='--input_height'):
    modules.load_module(spec)
  module, features = _features(spec, np.ones([1, 20, 30, 3], np.float32),
                               input_size=(20, 30))
  assert module.image_size == (20, 30) and module.bottleneck_size == 3


def test_missing_directory_and_unreachable_url_name_offline_alternatives():
  with tf.Graph().as_default():
    with pytest.raises(PoetsError, match='not found.*efficientnet_lite0'):
      modules.load_module(modules.ModuleSpec('/no/such/module', 'x'))
    with pytest.raises(PoetsError, match='Could not download.*'
                       'efficientnet_lite0'):
      modules.load_module(modules.ModuleSpec(
          'http://127.0.0.1:9/module.tar.gz', 'x'))


def _tar_gz(directory):
  buffer = io.BytesIO()
  with tarfile.open(fileobj=buffer, mode='w:gz') as archive:
    archive.add(directory, arcname='.')
  return buffer.getvalue()


def test_tar_gz_url_is_downloaded_once_into_model_dir_and_used(
    http_server, tf2_module, tmp_path):
  served, url = http_server
  (served / 'tiny.tar.gz').write_bytes(_tar_gz(tf2_module))
  model_dir = tmp_path / 'models'
  environment = dict(os.environ)
  spec = modules.resolve_module('', f'{url}/tiny.tar.gz', str(model_dir))
  module, features = _features(spec, np.ones([1, TINY_SIZE, TINY_SIZE, 3],
                                             np.float32))
  assert features.shape == (1, TINY_BOTTLENECK)
  assert dict(os.environ) == environment  # No TFHUB_CACHE_DIR left behind.
  assert os.listdir(model_dir) == [
      hashlib.sha1(f'{url}/tiny.tar.gz'.encode()).hexdigest()]
  (served / 'tiny.tar.gz').unlink()  # The second time comes from the cache.
  assert modules.module_info(spec).bottleneck_size == TINY_BOTTLENECK


def test_a_module_tf_hub_cached_in_model_dir_is_used_offline(tf2_module,
                                                              tmp_path):
  url = 'http://127.0.0.1:9/module.tar.gz'
  # TF Hub names its cache folders by the URL's SHA-1.
  shutil.copytree(tf2_module, tmp_path / hashlib.sha1(url.encode()).hexdigest())
  spec = modules.resolve_module('', url, str(tmp_path))
  _, features = _features(spec, np.ones([1, TINY_SIZE, TINY_SIZE, 3],
                                        np.float32))
  assert features.shape == (1, TINY_BOTTLENECK)


def test_importing_modules_changes_nothing_process_wide():
  resolvers = list(registry.resolver._impls)  # pylint: disable=protected-access
  environment = dict(os.environ)
  importlib.reload(modules)
  assert registry.resolver._impls == resolvers  # pylint: disable=protected-access
  assert dict(os.environ) == environment
