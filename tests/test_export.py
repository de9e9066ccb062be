"""Tests for poets/export.py: frozen graph, labels, SavedModel, ImageNet."""

import os

import numpy as np
import pytest
import tensorflow as tf

from conftest import TINY_SIZE
from poets import outputs
from poets import pipeline
from poets import settings
from poets.core import bottlenecks
from poets.core import export
from poets.core import final_layer
from poets.core import graph_names
from poets.core import image_decoding
from poets.core import labeling
from poets.core import modules
from poets.errors import PoetsError
from poets.extras import imagenet_demo
from poets.extras import saved_model
from poets.extras import tensorboard_graph


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
    image = image_decoding.decode_and_resize(contents, TINY_SIZE, TINY_SIZE)
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


def _final_weights(path):
  node, = [n for n in _load_graph_def(path).node
           if n.name == 'final_retrain_ops/weights/final_weights']
  return tf.make_ndarray(node.attr['value'].tensor)


def test_intermediate_graphs_hold_the_layer_of_their_step(retrained):
  """All come from one evaluation graph, each with its step's values."""
  config, _ = retrained
  folder = config.intermediate_output_graphs_dir
  assert sorted(os.listdir(folder)) == ['intermediate_100.pb',
                                        'intermediate_200.pb']
  at_100, at_200 = [_final_weights(os.path.join(folder, name)) for name in
                    ('intermediate_100.pb', 'intermediate_200.pb')]
  final = _final_weights(config.output_graph)
  np.testing.assert_array_equal(final, tf.train.load_checkpoint(
      config.checkpoint_path).get_tensor(
          'final_retrain_ops/weights/final_weights'))
  assert not np.allclose(at_100, at_200) and not np.allclose(at_200, final)


def test_saved_model_serves_image_to_prediction(retrained):
  config, _ = retrained
  loaded = tf.saved_model.load(config.saved_model_dir)
  serve = loaded.signatures['serving_default']
  image = np.zeros([1, TINY_SIZE, TINY_SIZE, 3], np.float32)
  image[..., 0] = 0.9  # Red.
  prediction = serve(image=tf.constant(image))['prediction'].numpy()
  assert prediction.shape == (1, 3)
  assert np.argmax(prediction[0]) == 2


def _write_tree(root, tree):
  for name, content in tree.items():
    path = root / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(content)


@pytest.mark.parametrize('tree', [
    {'thesis.txt': 'precious'},
    # Somebody else's SavedModel, with their notes beside it.
    {'saved_model.pb': 'theirs', 'variables/variables.index': 'theirs',
     'notes.txt': 'precious'},
])
def test_saved_model_never_overwrites_a_foreign_folder(retrained, tmp_path,
                                                       tree):
  config, _ = retrained
  foreign = tmp_path / 'mine'
  _write_tree(foreign, tree)
  with pytest.raises(PoetsError, match='--saved_model_dir'):
    saved_model.export_saved_model(_load_graph_def(config.output_graph),
                              str(foreign), 'final_result')
  for name, content in tree.items():
    assert (foreign / name).read_text() == content
  assert os.listdir(tmp_path) == ['mine']


def test_saved_model_never_replaces_a_file(retrained, tmp_path):
  config, _ = retrained
  (tmp_path / 'model').write_text('precious')
  with pytest.raises(PoetsError, match='--saved_model_dir.*is a file'):
    saved_model.export_saved_model(_load_graph_def(config.output_graph),
                              str(tmp_path / 'model'), 'final_result')
  assert (tmp_path / 'model').read_text() == 'precious'
  assert os.listdir(tmp_path) == ['model']


def test_saved_model_replaces_an_earlier_export(retrained, tmp_path):
  config, _ = retrained
  graph_def = _load_graph_def(config.output_graph)
  target = tmp_path / 'sm'
  saved_model.export_saved_model(graph_def, str(target), 'final_result')
  saved_model.export_saved_model(graph_def, str(target), 'final_result')
  assert (target / 'saved_model.pb').exists()
  assert os.listdir(tmp_path) == ['sm']
  # A file somebody put into the export since makes it theirs too.
  (target / 'notes.txt').write_text('precious')
  with pytest.raises(PoetsError, match='notes.txt'):
    saved_model.export_saved_model(graph_def, str(target), 'final_result')
  assert (target / 'notes.txt').read_text() == 'precious'


def test_an_interrupted_saved_model_export_leaves_nothing_behind(
    retrained, tmp_path, monkeypatch):
  config, _ = retrained

  def interrupted(self, *args, **kwargs):
    raise KeyboardInterrupt

  monkeypatch.setattr(tf.compat.v1.saved_model.Builder, 'save', interrupted)
  with pytest.raises(KeyboardInterrupt):
    saved_model.export_saved_model(_load_graph_def(config.output_graph),
                              str(tmp_path / 'sm'), 'final_result')
  assert os.listdir(tmp_path) == []


def test_final_tensor_name_is_honoured_in_graph_and_saved_model(
    retrained, tmp_path, monkeypatch):
  config, _ = retrained
  renamed = config.replace(
      output_graph=str(tmp_path / 'g.pb'),
      output_labels=str(tmp_path / 'labels.txt'),
      saved_model_dir=str(tmp_path / 'sm'), intermediate_store_frequency=5,
      intermediate_output_graphs_dir=str(tmp_path / 'i'),
      final_tensor_name='flower_scores', how_many_training_steps=20,
      summaries_dir=str(tmp_path / 's'),
      checkpoint_path=str(tmp_path / 'c' / 'x'))
  loads = []
  load = modules.hub.load
  monkeypatch.setattr(modules.hub, 'load',
                      lambda path: loads.append(path) or load(path))
  pipeline.run(renamed)
  # Bottlenecks cached: one load makes 3 intermediate graphs, the final one
  # and the SavedModel (the module once per graph, one graph for export).
  assert len(os.listdir(tmp_path / 'i')) == 3 and len(loads) == 1
  names = {node.name for node in _load_graph_def(renamed.output_graph).node}
  assert 'flower_scores' in names and 'final_result' not in names
  serve = tf.saved_model.load(renamed.saved_model_dir).signatures[
      'serving_default']
  image = np.zeros([1, TINY_SIZE, TINY_SIZE, 3], np.float32)
  assert serve(image=tf.constant(image))['prediction'].shape == (1, 3)


def _frozen_with_module(spec):
  """Placeholder -> module -> a new final layer, frozen as export does."""
  graph = tf.Graph()
  with graph.as_default():
    module = modules.load_module(spec)
    image = tf.compat.v1.placeholder(
        tf.float32, [None, *module.image_size, 3], name=graph_names.INPUT_NAME)
    final_layer.add_final_retrain_ops(3, 'final_result', module.apply(image))
    init = tf.compat.v1.global_variables_initializer()
  with tf.compat.v1.Session(graph=graph) as session:
    session.run(init)
    return export.freeze(session, 'final_result')


def _run(graph_def, images):
  graph = export.import_frozen(graph_def)
  with tf.compat.v1.Session(graph=graph) as session:
    return session.run('final_result:0', {'Placeholder:0': images})


@pytest.mark.parametrize('module_fixture', ['tf2_module', 'tf1_hub_module'])
def test_inlined_module_computes_what_the_call_did(module_fixture, request,
                                                   tmp_path):
  """The graph TensorBoard shows is the exported one opened up, not a
  look-alike: with the weights still in, it gives the same probabilities."""
  spec = modules.resolve_module('', request.getfixturevalue(module_fixture),
                                str(tmp_path))
  frozen = _frozen_with_module(spec)
  inlined = tensorboard_graph.inline_functions(frozen, spec.name)
  assert not inlined.library.function
  assert not [n.name for n in inlined.node if n.op in tensorboard_graph._CALL_OPS]
  images = np.random.default_rng(0).uniform(
      size=[4, TINY_SIZE, TINY_SIZE, 3]).astype(np.float32)
  np.testing.assert_allclose(_run(inlined, images), _run(frozen, images),
                             rtol=1e-6)


def _weights_left(graph_def):
  """Constants of more than 8 values that still hold them, loops included."""
  nodes = list(graph_def.node)
  for function in graph_def.library.function:
    nodes.extend(function.node_def)
  def holds_values(tensor):
    return {field.name for field, _ in tensor.ListFields()} - {
        'dtype', 'tensor_shape'}

  return [node.name for node in nodes if node.op == 'Const' and
          tf.TensorShape(node.attr['value'].tensor.tensor_shape)
          .num_elements() > 8 and holds_values(node.attr['value'].tensor)]


def test_weights_inside_a_loop_are_left_out_too():
  """The codelab's Inception takes one image at a time, so its graph is
  imported inside a tf.map_fn loop, whose body holds the weights."""
  graph = tf.Graph()
  with graph.as_default():
    batch = tf.compat.v1.placeholder(tf.float32, [None, 4], name='Placeholder')
    tf.identity(tf.map_fn(lambda row: tf.linalg.matvec(
        tf.constant(np.ones([16, 4], np.float32)), row), batch),
                name='final_result')
  frozen = graph.as_graph_def()
  assert _weights_left(frozen)
  shown = tensorboard_graph.tensorboard_graph_def(frozen, 'net')
  assert shown.library.function  # The loop is still there...
  assert not _weights_left(shown)  # ...without its weights.


def test_tensorboard_graph_is_one_module_scope_without_weights(retrained):
  config, _ = retrained
  name = _module_name(config)  # '~...~tiny_tf2', made from the module's path.
  shown = tensorboard_graph.tensorboard_graph_def(_load_graph_def(config.output_graph),
                                       name)
  scope = name.replace('~', '_').lstrip('_')
  assert {n.name.split('/')[0] for n in shown.node} == {
      'Placeholder', scope, 'input', 'final_retrain_ops', 'final_result',
      outputs.RUN_ID_NODE}
  module_ops = {n.name[len(scope) + 1:]: n.op for n in shown.node
                if n.name.startswith(scope + '/')}
  assert module_ops['Mean'] == 'Mean'  # The tiny module's colour means.
  assert module_ops['Variable'] == 'Const'  # Its weights, moved in.
  assert not _weights_left(shown)
  weights = {n.name: n for n in shown.node}[f'{scope}/Variable']
  assert tf.TensorShape(weights.attr['value'].tensor.tensor_shape) == [6, 8]
  assert weights.attr['_output_shapes'].list.shape  # Edges show shapes.


@pytest.mark.slow
def test_default_network_graph_event_is_small_and_shows_its_layers(tmp_path,
                                                                    lite0_dir):
  spec = modules.resolve_module('efficientnet_lite0', '',
                                os.path.dirname(lite0_dir))
  frozen = _frozen_with_module(spec)
  tensorboard_graph.write_graph_summary(frozen, str(tmp_path / 'summaries'), spec.name)
  (event,) = (tmp_path / 'summaries' / 'retrained_graph').glob('events.*')
  assert frozen.ByteSize() > 10e6  # The weights, in the .pb...
  assert event.stat().st_size < 2e6  # ...but not in TensorBoard's copy.
  (shown,) = [tf.compat.v1.GraphDef.FromString(e.graph_def) for e in
              tf.compat.v1.train.summary_iterator(str(event)) if e.graph_def]
  layers = {n.name.split('/')[1] for n in shown.node
            if n.name.startswith('efficientnet_lite0/')}
  # EfficientNet-Lite0: a stem, 16 MBConv blocks, a head.
  assert {'stem', 'head'} | {f'block{i}' for i in range(16)} <= layers


def test_imagenet_graph_labels_a_photo_before_any_retraining(tmp_path,
                                                             lite0_dir):
  data = pytest.importorskip('skimage.data')
  photo = tmp_path / 'chelsea.jpg'
  photo.write_bytes(tf.io.encode_jpeg(data.chelsea(), quality=95).numpy())
  graph, labels = str(tmp_path / 'imagenet.pb'), str(tmp_path / 'labels.txt')
  imagenet_demo.export_imagenet_graph(graph, labels,
                               model_dir=os.path.dirname(lite0_dir))
  assert labeling.list_layers(graph).startswith(
      'Inputs (--input_layer):\n  Placeholder float32 [?,224,224,3]\n')
  run = labeling.label_images(settings.LabelConfig(
      graph=graph, labels=labels, images=[str(photo)]))
  assert run.results[0].predictions[0].label in (
      'Egyptian cat', 'tabby', 'tiger cat')
