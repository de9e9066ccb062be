"""Export: the frozen graph, the labels file, the SavedModel, and the graph
TensorBoard shows.

The fifth stage. The frozen `.pb` is built from an evaluation graph (the
module and the new layer, no training ops), built once per run for its
intermediate graphs and its final one: the layer set to the values of the
moment, variables turned into constants, and everything `final_result` does
not need pruned, functions included. The SavedModel and the .tflite are made
from the frozen graph, so the module is loaded for none of them. Its
input is `Placeholder` (float32 [None, H, W, 3] in [0, 1]) and its output the
`--final_tensor_name` softmax, as in the original hub-based retrain.py.
TensorBoard gets the same graph with the module's function call opened up
into its layers and without the weights. label_image.py --imagenet's graph,
the embedded module's own ImageNet classifier, is frozen here the same way.
"""


import functools

import tensorflow as tf

from poets import files
from poets.core import final_layer
from poets.core import fine_tuning
from poets.core import graph_names
from poets.core import modules

def _used_functions(graph_def):
  """Names of the library functions reachable from the graph's nodes."""
  by_name = {f.signature.name: f for f in graph_def.library.function}
  used = set()

  def visit(nodes):
    for node in nodes:
      for attr in node.attr.values():
        names = [attr.func.name] if attr.HasField('func') else []
        names += [f.name for f in attr.list.func]
        for name in names:
          if name in by_name and name not in used:
            used.add(name)
            visit(by_name[name].node_def)
      if node.op in by_name and node.op not in used:
        used.add(node.op)
        visit(by_name[node.op].node_def)

  visit(graph_def.node)
  return used


def prune_functions(graph_def):
  """Drops library functions that no node calls (the loaded module keeps
  every function of its SavedModel, most of them unused by inference)."""
  used = _used_functions(graph_def)
  kept = [f for f in graph_def.library.function if f.signature.name in used]
  gradients = [g for g in graph_def.library.gradient
               if g.function_name in used]
  del graph_def.library.function[:]
  graph_def.library.function.extend(kept)
  del graph_def.library.gradient[:]
  graph_def.library.gradient.extend(gradients)
  return graph_def


def freeze(session, output_name):
  """The session's graph with variables as constants, pruned to what
  `output_name` needs, unused library functions included."""
  graph_def = tf.compat.v1.graph_util.convert_variables_to_constants(
      session, session.graph.as_graph_def(), [output_name])
  return prune_functions(graph_def)


class FrozenGraphs:
  """Frozen graphs of the module with a trained layer on top, all from one
  evaluation graph (the module and the new layer, no training ops).

  The graph is built and the module loaded on the first `freeze`; every
  later one (the run's intermediate graphs, then its final one) only sets
  the layer's values. Use it in a `with` block, which closes its session.
  """

  def __init__(self, module_spec, class_count, final_tensor_name, cut=None):
    self._module_spec = module_spec
    # A fine_tuning.Cut: the network is built in two, its top trainable.
    self._cut = cut
    self._class_count = class_count
    self._final_tensor_name = final_tensor_name
    self._session = None

  def _build(self):
    graph = tf.Graph()
    with graph.as_default():
      if self._cut:
        height = width = self._cut.image_size
        apply = functools.partial(fine_tuning.network, self._cut)
      else:
        module = modules.load_module(self._module_spec)
        height, width = module.image_size
        apply = module.apply
      resized_input = tf.compat.v1.placeholder(
          tf.float32, [None, height, width, 3], name=graph_names.INPUT_NAME)
      if resized_input.op.name != graph_names.INPUT_NAME:
        raise AssertionError(f'input placeholder became {resized_input.name}')
      layer = final_layer.add_final_retrain_ops(
          self._class_count, self._final_tensor_name, apply(resized_input))
      init = tf.compat.v1.global_variables_initializer()
    self._session = tf.compat.v1.Session(graph=graph)
    self._session.run(init)
    self._variables = final_layer.layer_variables_of(graph)
    self._output = layer.final_tensor.op.name

  def freeze(self, layer):
    """The graph with `layer` (TrainingResult.layer: the trained variables'
    values by name; fine-tuned blocks it lacks keep their pretrained
    values), frozen and pruned."""
    if self._session is None:
      self._build()
    with self._session.graph.as_default():  # Variable.load needs it.
      for variable in self._variables:
        if variable.op.name in layer:
          variable.load(layer[variable.op.name], self._session)
    return freeze(self._session, self._output)

  def __enter__(self):
    return self

  def __exit__(self, *exc_info):
    if self._session is not None:
      self._session.close()


def save_graph(graph_def, path):
  files.atomic_write(path, graph_def.SerializeToString())


def save_labels(labels, path):
  files.atomic_write(path, ''.join(f'{label}\n' for label in labels))


def import_frozen(graph_def):
  """A new graph holding `graph_def` under its own names (no prefix)."""
  graph = tf.Graph()
  with graph.as_default():
    tf.compat.v1.import_graph_def(graph_def, name='')
  return graph
