"""The codelab's graph tools: count_ops, graph_pb2tb and quantize_graph.

"TensorFlow for Poets 2" looked inside the frozen graph before putting it on
a phone: it counted the graph's operations, showed the graph in TensorBoard
and rounded its weights so the app's compressed download shrank. These are
those three on today's graphs, whose network may sit in a function that the
graph calls: operations are counted in the graph and in every function it
holds, TensorBoard gets the graph with the functions opened up (as
retrain.py's Graphs tab shows it), and rounding reaches weights inside
functions too.
"""

import numpy as np
import tensorflow as tf

from poets.core import export
from poets.core import summary_ops
from poets.extras import tensorboard_graph
from poets.errors import PoetsError

DEFAULT_BITDEPTH = 8
# The module's scope in TensorBoard when the graph does not say which it is.
TENSORBOARD_SCOPE = 'module'


def count_ops(graph_def, op_name=None):
  """How many operations the graph runs: its nodes and those of its
  functions; with `op_name`, those of that name or type (Conv2D, ...)."""
  nodes = list(graph_def.node)
  for function in graph_def.library.function:
    nodes.extend(function.node_def)
  if op_name is None:
    return len(nodes)
  return sum(1 for node in nodes if op_name in (node.name, node.op))


def write_tensorboard_graph(graph_def, out_dir):
  """An event file in `out_dir` holding the graph, for TensorBoard's Graphs
  tab: functions opened up into their layers, weights left out."""
  shown = tensorboard_graph.tensorboard_graph_def(graph_def, TENSORBOARD_SCOPE)
  with tf.Graph().as_default():  # FileWriter refuses to run eagerly.
    writer = summary_ops.event_writer(out_dir)
    writer.add_graph(None, graph_def=shown)
    writer.close()


def round_to_levels(values, levels):
  """Each value moved to the centre of one of `levels` equal buckets between
  the array's minimum and maximum, as the codelab's quantize_graph did
  (an array of one value stays as it is)."""
  low, high = values.min(), values.max()
  if low == high:
    return values
  width = (high - low) / levels
  buckets = np.minimum(np.floor((values - low) / width), levels - 1)
  return (low + width * (buckets + 0.5)).astype(values.dtype)


def _round_tensor(values, levels):
  """A depthwise kernel ([h, w, channels, 1]) gets levels per channel: with
  batch norm folded in, its channels' ranges differ by orders of magnitude,
  and one set of levels would flatten the small ones. Every other tensor
  gets one set, as in the codelab."""
  if values.ndim == 4 and values.shape[3] == 1:
    return np.stack([round_to_levels(values[:, :, c], levels)
                     for c in range(values.shape[2])], axis=2)
  return round_to_levels(values, levels)


def round_weights(graph_def, output_names, bitdepth=DEFAULT_BITDEPTH):
  """quantize_graph --mode=weights_rounded: every float32 constant rounded
  to 2**bitdepth levels, still float32, so the file is as large but
  compresses several times smaller; then only what `output_names` need is
  kept. Raises PoetsError for an output that is not in the graph."""
  names = {node.name for node in graph_def.node}
  missing = [name for name in output_names if name not in names]
  if missing:
    raise PoetsError(f'--output_node_names: no node {missing[0]} in the '
                     'graph; for retrain.py\'s graphs pass final_result.')
  rounded = tf.compat.v1.GraphDef()
  rounded.CopyFrom(graph_def)
  nodes = list(rounded.node)
  for function in rounded.library.function:
    nodes.extend(function.node_def)
  for node in nodes:
    if (node.op != 'Const' or
        node.attr['dtype'].type != tf.float32.as_datatype_enum):
      continue
    tensor = node.attr['value'].tensor
    values = tf.make_ndarray(tensor)
    tensor.CopyFrom(tf.make_tensor_proto(
        _round_tensor(values, 2**bitdepth), tf.float32, values.shape))
  return export.prune_functions(
      tf.compat.v1.graph_util.extract_sub_graph(rounded, output_names))
