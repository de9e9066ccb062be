"""--fine_tune_blocks: the cut cache, training the top, exporting it.

Most tests use a tiny EfficientNet-shaped network built here (three MBConv
blocks on 32x32 image_listing), so they take a second; one run of the real
EfficientNet-Lite0 checks the whole path a user takes, up to labelling with
label_image's defaults.
"""

import dataclasses
import functools
import os
import pathlib

import numpy as np
from google.protobuf import text_format
import pytest
from tensorboard.plugins.projector import projector_config_pb2
import tensorflow as tf

from poets.core.networks import efficientnet_lite
from poets.core import export
from poets.core import image_decoding
from poets.core import image_listing
from poets.core import labeling
from poets.core import modules
from poets.core import training
from poets import files
from poets import pipeline
from poets import settings
from poets.core import cut_cache
from poets.core import fine_tuning
from poets.errors import PoetsError
from poets.extras import dashboards

from conftest import ctrl_c_when_logged, make_image_dir

SIZE = 32


def _conv(rng, shape, stride=1, depthwise=False):
  kernel = rng.normal(scale=2 / np.sqrt(np.prod(shape[:-1])), size=shape)
  return efficientnet_lite._Conv(  # pylint: disable=protected-access
      kernel.astype(np.float32), np.full(shape[-1] if not depthwise else
                                         shape[2], 0.1, np.float32),
      stride, depthwise)


def _block(rng, channels_in, expanded, channels_out, stride):
  return efficientnet_lite._Block(  # pylint: disable=protected-access
      expand=_conv(rng, [1, 1, channels_in, expanded]),
      depthwise=_conv(rng, [3, 3, expanded, 1], stride, True),
      project=_conv(rng, [1, 1, expanded, channels_out]),
      residual=stride == 1 and channels_in == channels_out)


@pytest.fixture(scope='module')
def tiny_cut():
  """A three-block EfficientNet-shaped network, cut before its last two."""
  rng = np.random.default_rng(0)
  network = efficientnet_lite._Network(  # pylint: disable=protected-access
      stem=_conv(rng, [3, 3, 3, 8], stride=2),
      blocks=[_block(rng, 8, 16, 8, 1), _block(rng, 8, 16, 12, 2),
              _block(rng, 12, 24, 12, 1)],
      head=_conv(rng, [1, 1, 12, 16]),
      fc_kernel=None, fc_bias=None)
  return fine_tuning.Cut('tiny', network, SIZE, block=1)


@pytest.fixture(scope='module')
def tiny_module():
  spec = modules.ModuleSpec('unused', 'tiny')
  return modules.ModuleInfo(spec, (SIZE, SIZE), 16, functools.partial(
      image_decoding.decode_and_resize, height=SIZE, width=SIZE))


@pytest.fixture(scope='module')
def photos(tmp_path_factory):
  image_dir = make_image_dir(tmp_path_factory.mktemp('ft') / 'photos',
                             per_class=12)
  return image_listing.create_image_lists(image_dir, 20, 20)


def test_the_cut_is_named_and_shaped_by_network_and_block(tiny_cut):
  assert tiny_cut.shape == (16, 16, 8)  # stem /2, block 0 stride 1
  assert tiny_cut.name == 'tiny_cut1'
  lite0 = fine_tuning.Cut('efficientnet_lite0', efficientnet_lite.read_network(
      efficientnet_lite.get_variant('efficientnet_lite0')), 224, 14)
  assert lite0.shape == (7, 7, 192)


def test_a_damaged_cut_file_is_made_again(photos, tiny_module, tiny_cut,
                                          tmp_path, caplog):
  splits, summary = cut_cache.cache_cuts(photos, tiny_module, tiny_cut,
                                         str(tmp_path))
  assert summary.created == 36 and summary.reused == 0
  folder = tmp_path / 'tiny_cut1' / 'red'
  assert sorted(os.listdir(folder))[0] == 'red_000.jpg.npy'
  damaged = folder / 'red_000.jpg.npy'
  good = np.load(damaged)
  damaged.write_bytes(damaged.read_bytes()[:100])
  again, summary = cut_cache.cache_cuts(photos, tiny_module, tiny_cut,
                                        str(tmp_path))
  assert (summary.created, summary.reused, summary.recomputed) == (1, 35, 1)
  assert 'Recomputing bad cut file' in caplog.text
  np.testing.assert_array_equal(np.load(damaged), good)
  for name in image_listing.SPLITS:
    np.testing.assert_array_equal(again[name].bottlenecks,
                                  splits[name].bottlenecks)


def test_an_interrupted_cut_cache_resumes(photos, tiny_module, tiny_cut,
                                          tmp_path, monkeypatch):
  written = []
  real_write = cut_cache.write_cut

  def write_then_stop(path, values):
    if len(written) == 10:
      raise KeyboardInterrupt
    written.append(path)
    return real_write(path, values)

  monkeypatch.setattr(cut_cache, 'write_cut', write_then_stop)
  with pytest.raises(KeyboardInterrupt):
    cut_cache.cache_cuts(photos, tiny_module, tiny_cut, str(tmp_path))
  monkeypatch.setattr(cut_cache, 'write_cut', real_write)
  _, summary = cut_cache.cache_cuts(photos, tiny_module, tiny_cut,
                                    str(tmp_path))
  assert (summary.reused, summary.created) == (10, 26)
  leftovers = [name for _, _, names in os.walk(tmp_path) for name in names
               if not name.endswith('.npy')]
  assert not leftovers


def _settings(tmp_path, **changes):
  return settings.RetrainSettings(
      how_many_training_steps=60, fine_tune_steps=5, train_batch_size=10,
      learning_rate=0.5,
      eval_step_interval=20, fine_tune_blocks=2, random_seed=0,
      summaries_dir=str(tmp_path / 'summaries'),
      checkpoint_path=str(tmp_path / 'checkpoint' / 'retrain')).replace(
          **changes)


def _frozen(graph_def):
  return {node.name: tf.make_ndarray(node.attr['value'].tensor)
          for node in graph_def.node if node.op == 'Const'}


def test_fine_tuning_moves_the_top_and_keeps_the_bottom(
    photos, tiny_module, tiny_cut, tmp_path):
  cut_splits, _ = cut_cache.cache_cuts(photos, tiny_module, tiny_cut,
                                       str(tmp_path / 'cache'))
  splits = fine_tuning.pretrained_bottlenecks(tiny_cut, cut_splits)
  config = _settings(tmp_path)
  result = pipeline.train(config, photos.labels, tiny_module.spec,
                          tiny_module, splits, tiny_cut, cut_splits)
  assert result.steps_done == 65 and result.test is not None
  network = tiny_cut.network
  trained = result.layer['fine_tuned_blocks/block2/expand/kernel']
  assert not np.allclose(trained, network.blocks[2].expand.kernel)
  assert not np.allclose(result.layer['fine_tuned_blocks/head/kernel'],
                         network.head.kernel)
  # The checkpoint holds the model's weights, not the optimizer's state.
  saved = [name for name, _ in tf.train.list_variables(config.checkpoint_path)]
  assert sorted(saved) == sorted(result.layer)
  assert {name.rsplit('/', 1)[1] for name in saved} == {
      'kernel', 'bias', 'final_weights', 'final_biases'}
  with export.FrozenGraphs(tiny_module.spec, 3, 'final_result',
                           tiny_cut) as frozen_graphs:
    constants = _frozen(frozen_graphs.freeze(result.layer))
  np.testing.assert_array_equal(
      constants['frozen_blocks/block0/expand/kernel'],
      network.blocks[0].expand.kernel)
  np.testing.assert_array_equal(
      constants['fine_tuned_blocks/block2/expand/kernel'], trained)


def _projector(folder):
  """{name: (embedding config, features)} of the Projector files there."""
  config = text_format.Parse(
      (folder / dashboards.PROJECTOR_CONFIG).read_text(),
      projector_config_pb2.ProjectorConfig())
  return {embedding.tensor_name: (embedding, np.fromfile(
      folder / embedding.tensor_path, np.float32).reshape(
          embedding.tensor_shape)) for embedding in config.embeddings}


def test_the_projector_shows_the_fine_tuned_features_beside_the_pretrained(
    photos, tiny_module, tiny_cut, tmp_path):
  cut_splits, _ = cut_cache.cache_cuts(photos, tiny_module, tiny_cut,
                                       str(tmp_path / 'cache'))
  splits = fine_tuning.pretrained_bottlenecks(tiny_cut, cut_splits)
  config = _settings(tmp_path, how_many_training_steps=10,
                     bottleneck_dir=str(tmp_path / 'cache'))
  result = pipeline.train(config, photos.labels, tiny_module.spec,
                          tiny_module, splits, tiny_cut, cut_splits)
  dashboards.write_run(config.summaries_dir, config, tiny_module, splits,
                       photos.labels, result, tiny_cut, cut_splits)
  folder = tmp_path / 'summaries' / dashboards.PROJECTOR_RUN
  shown = _projector(folder)
  assert list(shown) == [dashboards.PRETRAINED, dashboards.FINE_TUNED]
  for embedding, features in shown.values():
    assert embedding.metadata_path == dashboards.METADATA
    assert embedding.sprite.image_path == dashboards.SPRITE
    assert features.shape == (36, 16)
  (_, pretrained), (_, fine_tuned) = shown.values()
  assert not np.allclose(pretrained, fine_tuned)
  # The fine-tuned features are what the trained layer classified: through
  # its weights they give the test photos' scores.
  testing = (folder / dashboards.METADATA).read_text().splitlines()[1:]
  rows = [i for i, line in enumerate(testing)
          if line.split('\t')[1] == 'testing']
  logits = (fine_tuned[rows] @
            result.layer['final_retrain_ops/weights/final_weights'] +
            result.layer['final_retrain_ops/biases/final_biases'])
  scores = np.exp(logits - logits.max(axis=1, keepdims=True))
  np.testing.assert_allclose(scores / scores.sum(axis=1, keepdims=True),
                             result.test.scores, atol=1e-5)
  # A run stopped before fine-tuning began shows the pretrained ones alone.
  layer = {name: value for name, value in result.layer.items()
           if not name.startswith('fine_tuned_blocks/')}
  dashboards.write_run(config.summaries_dir, config, tiny_module, splits,
                       photos.labels, dataclasses.replace(result, layer=layer),
                       tiny_cut, cut_splits)
  assert list(_projector(folder)) == [dashboards.PRETRAINED]


def test_a_stop_while_fine_tuning_keeps_what_was_trained(
    photos, tiny_module, tiny_cut, tmp_path):
  cut_splits, _ = cut_cache.cache_cuts(photos, tiny_module, tiny_cut,
                                       str(tmp_path / 'cache'))
  splits = fine_tuning.pretrained_bottlenecks(tiny_cut, cut_splits)
  config = _settings(tmp_path, eval_step_interval=1)
  with ctrl_c_when_logged('Step 62: Validation accuracy'):
    result = pipeline.train(config, photos.labels, tiny_module.spec,
                            tiny_module, splits, tiny_cut, cut_splits)
  assert result.interrupted and result.steps_done == 62
  assert 'fine_tuned_blocks/head/kernel' in result.layer
  checkpoint = tf.train.load_checkpoint(
      files.interrupted_path(config.checkpoint_path))
  np.testing.assert_array_equal(
      checkpoint.get_tensor('fine_tuned_blocks/head/kernel'),
      result.layer['fine_tuned_blocks/head/kernel'])


def test_without_fine_tuning_the_cache_and_graph_are_as_before(retrained):
  config, _ = retrained
  cached = sorted(os.listdir(config.bottleneck_dir))
  assert [name for name in cached if not name.startswith('.')] == [
      'blue', 'green', 'red']  # No cut folder beside the class folders.
  assert all(name.endswith('.txt') for name in os.listdir(
      os.path.join(config.bottleneck_dir, 'red')))
  graph_def = tf.compat.v1.GraphDef.FromString(
      open(config.output_graph, 'rb').read())
  assert not [node.name for node in graph_def.node if 'blocks' in node.name]
  saved = [name for name, _ in tf.train.list_variables(config.checkpoint_path)]
  assert saved == ['final_retrain_ops/biases/final_biases',
                   'final_retrain_ops/weights/final_weights']


def test_distorted_photos_go_through_the_frozen_bottom(
    photos, tiny_module, tiny_cut, tmp_path):
  cut_splits, _ = cut_cache.cache_cuts(photos, tiny_module, tiny_cut,
                                       str(tmp_path / 'cache'))
  result = training.train(
      _settings(tmp_path, flip_left_right=True), cut_splits, photos.labels,
      fine_tune=fine_tuning.FineTuning(
          tiny_cut, fine_tuning.bottom_module(tiny_cut, tiny_module), {},
          first_step=60, steps=3,
          learning_rate=settings.RetrainSettings.fine_tune_learning_rate))
  assert result.steps_done == 63
  assert not np.allclose(result.layer['fine_tuned_blocks/head/kernel'],
                         tiny_cut.network.head.kernel)


@pytest.mark.parametrize('architecture, tfhub_module, message', [
    ('', '/m/tiny', 'cannot train the layers of a --tfhub_module'),
    ('mobilenet_0.25_224', '',
     'mobilenet_0.25_224 is a frozen graph that can only retrain its last'),
    ('EfficientNet_Lite0', '',
     'efficientnet_lite0 has 16 blocks; pass at most 16'),
])
def test_unsupported_networks_and_sizes_are_refused_in_one_line(
    architecture, tfhub_module, message):
  with pytest.raises(PoetsError, match=message) as refused:
    fine_tuning.find_cut(architecture, tfhub_module, 17)
  assert '\n' not in str(refused.value)


@pytest.fixture(scope='module')
def fine_tuned_run(tmp_path_factory, lite0_dir):
  """One retrain run of --fine_tune_blocks 1 on the embedded network."""
  root = tmp_path_factory.mktemp('fine_tuned_run')
  config = _settings(
      root, image_dir=make_image_dir(root / 'photos', per_class=8),
      fine_tune_blocks=1, fine_tune_steps=2, how_many_training_steps=6,
      train_batch_size=8, eval_step_interval=3,
      model_dir=os.path.dirname(lite0_dir),
      bottleneck_dir=str(root / 'bottlenecks'),
      output_graph=str(root / 'retrained_graph.pb'),
      output_labels=str(root / 'retrained_labels.txt'))
  return config, pipeline.run(config)


def test_a_fine_tuned_graph_labels_with_label_image_defaults(fine_tuned_run):
  config, result = fine_tuned_run
  assert not result.training.interrupted
  assert [name for name in os.listdir(config.bottleneck_dir)
          if not name.startswith('.')] == ['efficientnet_lite0_cut15']
  photo = os.path.join(config.image_dir, 'blue', 'blue_001.jpg')
  run = labeling.label_images(settings.LabelConfig(
      graph=config.output_graph, labels=config.output_labels,
      images=[photo]))
  (labelled,) = run.results
  assert labelled.error is None
  assert {p.label for p in labelled.predictions} == {'blue', 'green', 'red'}
  assert abs(sum(p.score for p in labelled.predictions) - 1) < 1e-4


def test_a_fine_tuned_runs_projector_shows_both_features(fine_tuned_run):
  config, _ = fine_tuned_run
  shown = _projector(pathlib.Path(config.summaries_dir) /
                     dashboards.PROJECTOR_RUN)
  assert list(shown) == [dashboards.PRETRAINED, dashboards.FINE_TUNED]
  (_, pretrained), (_, fine_tuned) = shown.values()
  assert pretrained.shape == fine_tuned.shape == (24, 1280)
  assert not np.allclose(pretrained, fine_tuned)
