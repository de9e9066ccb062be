"""The codelab's graph tools on a retrained graph: count_ops, graph_pb2tb and
quantize_graph --mode=weights_rounded."""

import glob
import gzip
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from tensorflow.python.tools import optimize_for_inference_lib

from poets import settings
from poets.core import export
from poets.core import frozen_graphs
from poets.core import labeling
from poets.core import modules
from poets.errors import PoetsError
from poets.extras import graph_tools

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope='module')
def graph_def(retrained):
  config, _ = retrained
  return frozen_graphs.load_graph_def(config.output_graph)


@pytest.fixture(scope='module')
def called_graph_def(retrained):
  """The same graph with the module as a function it calls, as graphs
  frozen from a TF2 SavedModel come."""
  config, result = retrained
  spec = modules.resolve_module('', config.tfhub_module, config.model_dir)
  with export.FrozenGraphs(spec, len(result.labels),
                           config.final_tensor_name) as graphs:
    return graphs.freeze(result.training.layer)


def _label(graph, config, **kwargs):
  photos = sorted(glob.glob(os.path.join(config.image_dir, '*', '*.jpg')))
  return labeling.label_images(settings.LabelConfig(
      graph=graph, labels=config.output_labels, images=photos, **kwargs))


def _scores(run):
  return np.array([[p.score for p in r.predictions] for r in run.results])


def test_tensorflows_optimize_for_inference_works_on_the_exported_graph(
    retrained, graph_def, tmp_path):
  """The codelab's first command of its second half; it drops the graph's
  functions, so retrain.py exports the module opened up."""
  config, _ = retrained
  optimized = optimize_for_inference_lib.optimize_for_inference(
      graph_def, ['Placeholder'], ['final_result'],
      tf.float32.as_datatype_enum)
  assert not [n for n in graph_def.node if n.op.endswith('PartitionedCall')]
  assert graph_tools.count_ops(optimized, 'Identity') < (
      graph_tools.count_ops(graph_def, 'Identity'))
  path = str(tmp_path / 'optimized_graph.pb')
  export.save_graph(optimized, path)
  np.testing.assert_allclose(_scores(_label(path, config)),
                             _scores(_label(config.output_graph, config)),
                             atol=1e-6)


def test_count_ops_counts_the_network_inside_its_function(called_graph_def):
  graph_def = called_graph_def
  in_functions = sum(len(f.node_def) for f in graph_def.library.function)
  assert in_functions  # The module is a function the graph calls.
  assert graph_tools.count_ops(graph_def) == len(graph_def.node) + (
      in_functions)
  assert graph_tools.count_ops(graph_def, 'final_result') == 1
  assert graph_tools.count_ops(graph_def, 'Softmax') == 1
  assert graph_tools.count_ops(graph_def, 'Conv2D') == 0


def test_rounding_is_the_codelabs():
  np.testing.assert_allclose(
      graph_tools.round_to_levels(np.array([0, 0.3, 0.6, 1], np.float32), 2),
      [0.25, 0.25, 0.75, 0.75])
  same = np.full([3, 3], 0.5, np.float32)
  assert graph_tools.round_to_levels(same, 256) is same


def _float_constants(graph_def):
  nodes = list(graph_def.node)
  for function in graph_def.library.function:
    nodes.extend(function.node_def)
  return [tf.make_ndarray(n.attr['value'].tensor) for n in nodes
          if n.op == 'Const' and n.attr['dtype'].type == tf.float32.as_datatype_enum]


@pytest.mark.parametrize('called', [False, True])
def test_rounded_graph_has_few_levels_labels_alike_and_compresses(
    retrained, graph_def, called_graph_def, tmp_path, called):
  config, _ = retrained
  graph_def = called_graph_def if called else graph_def
  rounded = graph_tools.round_weights(graph_def, ['final_result'], bitdepth=2)
  assert all(len(np.unique(v)) <= 4 for v in _float_constants(rounded))
  assert any(len(np.unique(v)) > 4 for v in _float_constants(graph_def))
  path = str(tmp_path / 'rounded_graph.pb')
  export.save_graph(graph_tools.round_weights(graph_def, ['final_result']),
                    path)

  def top1(graph):
    return [r.predictions[0].label
            for r in _label(graph, config, top_k=1).results]

  assert top1(path) == top1(config.output_graph)
  with open(path, 'rb') as f:
    assert len(gzip.compress(f.read())) < len(gzip.compress(
        graph_def.SerializeToString()))


def test_an_output_that_is_not_there_is_one_line(graph_def):
  with pytest.raises(PoetsError) as raised:
    graph_tools.round_weights(graph_def, ['final_layer'])
  assert str(raised.value) == (
      "--output_node_names: no node final_layer in the graph; for "
      "retrain.py's graphs pass final_result.")


def test_tensorboard_gets_the_graph_opened_up(called_graph_def, tmp_path):
  graph_tools.write_tensorboard_graph(called_graph_def,
                                      str(tmp_path / 'retrained'))
  events = glob.glob(str(tmp_path / 'retrained' / 'events.out.tfevents.*'))
  shown = tf.compat.v1.GraphDef()
  for event in tf.compat.v1.train.summary_iterator(events[0]):
    if event.graph_def:
      shown.ParseFromString(event.graph_def)
  names = {node.name: node.op for node in shown.node}
  assert names['Placeholder'] == 'Placeholder'
  assert names['final_result'] == 'Softmax'
  assert names[f'{graph_tools.TENSORBOARD_SCOPE}/Mean'] == 'Mean'
  assert not shown.library.function


@pytest.mark.slow
def test_quantize_graph_refuses_the_gone_modes(retrained, tmp_path):
  """Its rounding is docs/mobile.md's command, which the README test runs;
  what it rounds is checked in-process above."""
  config, _ = retrained
  done = subprocess.run(
      [sys.executable, '-m', 'scripts.quantize_graph',
       f'--input={config.output_graph}', f'--output={tmp_path / "q.pb"}',
       '--mode=eightbit'], cwd=REPO, capture_output=True, text=True,
      timeout=300, check=False)
  assert done.returncode == 1
  assert done.stderr.strip().splitlines() == [
      'ERROR: --mode=eightbit made TensorFlow 1 quantized ops, which '
      'TensorFlow 2 no longer has; for an integer model use TensorFlow '
      'Lite: retrain.py --output_tflite tf_files/optimized_graph.tflite '
      '--tflite_quantization int8 (or tflite_convert.py --quantization '
      'int8), or keep --mode=weights_rounded for a .pb that compresses '
      'smaller.']
  assert not (tmp_path / 'q.pb').exists()
