"""Tests for poets/export.py: frozen graph, labels, SavedModel."""

import os

import numpy as np
import pytest
import tensorflow as tf

from conftest import TINY_SIZE
from poets import bottlenecks
from poets import export
from poets import images
from poets import modules
from poets import pipeline
from poets.errors import PoetsError


def _load_graph_def(path):
  graph_def = tf.compat.v1.GraphDef()
  with open(path, 'rb') as f:
    graph_def.ParseFromString(f.read())
  return graph_def


def test_frozen_graph_has_the_original_names_and_no_training_ops(retrained):
  config, _ = retrained
  graph_def = _load_graph_def(config.output_graph)
  names = {node.name: node for node in graph_def.node}
  assert names['Placeholder'].op == 'Placeholder'
  assert names['final_result'].op == 'Softmax'
  assert 'input/BottleneckInputPlaceholder' in names
  assert 'final_retrain_ops/weights/final_weights' in names
  assert not any(node.op in ('VarHandleOp', 'VariableV2', 'ApplyGradientDescent',
                             'ResourceApplyGradientDescent')
                 for node in graph_def.node)
  assert not any(name.startswith(('train/', 'cross_entropy')) for name in names)
  shape = [d.size for d in names['Placeholder'].attr['shape'].shape.dim]
  assert shape == [-1, TINY_SIZE, TINY_SIZE, 3]


def test_unused_module_functions_are_pruned(retrained):
  config, _ = retrained
  graph_def = _load_graph_def(config.output_graph)
  assert export._used_functions(graph_def) == {
      f.signature.name for f in graph_def.library.function}


def test_frozen_graph_matches_the_training_session(retrained):
  """Reloaded, the .pb gives the probabilities the trained layer gives to
  the cached bottlenecks."""
  config, result = retrained
  weights = tf.train.load_checkpoint(config.checkpoint_path)
  w = weights.get_tensor('final_retrain_ops/weights/final_weights')
  b = weights.get_tensor('final_retrain_ops/biases/final_biases')
  image_path = os.path.join(config.image_dir, 'green', 'green_004.jpg')
  cached, _ = bottlenecks.read_bottleneck(bottlenecks.bottleneck_path(
      config.bottleneck_dir, 'green', 'green_004.jpg', _module_name(config)))
  logits = cached @ w + b
  expected = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()

  graph = export.import_frozen(_load_graph_def(config.output_graph))
  with graph.as_default():
    contents = tf.io.read_file(image_path)
    image = images.decode_and_resize(contents, TINY_SIZE, TINY_SIZE)
  with tf.compat.v1.Session(graph=graph) as session:
    pixels = session.run(image)
    probabilities = session.run('final_result:0',
                                {'Placeholder:0': pixels[None]})
  np.testing.assert_allclose(probabilities[0], expected, atol=1e-5)
  assert result.labels[int(np.argmax(probabilities))] == 'green'


def _module_name(config):
  return modules.resolve_module('', config.tfhub_module, '').name


def test_labels_file_one_per_line_in_class_order(retrained):
  config, _ = retrained
  with open(config.output_labels) as f:
    assert f.read() == 'blue\ngreen\nred\n'


def test_intermediate_graphs_are_written(retrained):
  config, _ = retrained
  assert sorted(os.listdir(config.intermediate_output_graphs_dir)) == [
      'intermediate_100.pb', 'intermediate_200.pb']


def test_saved_model_serves_image_to_prediction(retrained):
  config, _ = retrained
  loaded = tf.saved_model.load(config.saved_model_dir)
  serve = loaded.signatures['serving_default']
  image = np.zeros([1, TINY_SIZE, TINY_SIZE, 3], np.float32)
  image[..., 0] = 0.9  # Red.
  prediction = serve(image=tf.constant(image))['prediction'].numpy()
  assert prediction.shape == (1, 3)
  assert np.argmax(prediction[0]) == 2


def test_saved_model_never_overwrites_a_foreign_folder(retrained, tmp_path):
  config, _ = retrained
  foreign = tmp_path / 'mine'
  foreign.mkdir()
  (foreign / 'thesis.txt').write_text('precious')
  with pytest.raises(PoetsError, match='is not a SavedModel'):
    export.export_saved_model(_load_graph_def(config.output_graph),
                              str(foreign), 'final_result')
  assert (foreign / 'thesis.txt').read_text() == 'precious'


def test_saved_model_replaces_an_earlier_export(retrained, tmp_path):
  config, _ = retrained
  graph_def = _load_graph_def(config.output_graph)
  target = tmp_path / 'sm'
  export.export_saved_model(graph_def, str(target), 'final_result')
  (target / 'marker').write_text('old')
  export.export_saved_model(graph_def, str(target), 'final_result')
  assert not (target / 'marker').exists()
  assert (target / 'saved_model.pb').exists()
  assert [p for p in os.listdir(tmp_path) if p != 'sm'] == []


def test_final_tensor_name_is_honoured_in_graph_and_saved_model(
    retrained, tmp_path):
  config, _ = retrained
  renamed = config.replace(
      output_graph=str(tmp_path / 'g.pb'),
      output_labels=str(tmp_path / 'labels.txt'),
      saved_model_dir=str(tmp_path / 'sm'), intermediate_store_frequency=0,
      final_tensor_name='flower_scores', how_many_training_steps=20,
      summaries_dir=str(tmp_path / 's'),
      checkpoint_path=str(tmp_path / 'c' / 'x'))
  pipeline.run(renamed)
  names = {node.name for node in _load_graph_def(renamed.output_graph).node}
  assert 'flower_scores' in names and 'final_result' not in names
  serve = tf.saved_model.load(renamed.saved_model_dir).signatures[
      'serving_default']
  image = np.zeros([1, TINY_SIZE, TINY_SIZE, 3], np.float32)
  assert serve(image=tf.constant(image))['prediction'].shape == (1, 3)
