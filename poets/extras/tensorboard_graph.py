"""The TensorBoard graph: the exported graph as the Graphs tab shows it.

The module arrives in the frozen graph as one function call, which the Graphs
tab cannot open; here its body is inlined under one name scope named after
the module, and the weights are left out, so the tab shows the module as one
box that expands into its layers, as the original's hub.Module graph did.
"""

import dataclasses
import os
import re

import tensorflow as tf
from tensorflow.python.framework import function_def_to_graph

from poets.core import export
from poets.core import summary_ops


# Constants of at most this many values keep them in the Graphs tab (the
# 255 that scales the input, a mean's axes); weights show dtype and shape only.
_SHOWN_CONSTANT_VALUES = 8

_CALL_OPS = ('PartitionedCall', 'StatefulPartitionedCall')


@dataclasses.dataclass
class _Scope:
  """One function body being inlined: its nodes' new names, and where its
  arguments and nested calls' outputs come from."""
  prefix: str
  names: dict = dataclasses.field(default_factory=dict)
  args: dict = dataclasses.field(default_factory=dict)  # arg -> (scope, tensor)
  calls: dict = dataclasses.field(default_factory=dict)  # call -> (scope, outputs)


def _called_function(node, library):
  if node.op in library:
    return library[node.op]
  if node.op in _CALL_OPS and node.attr['f'].func.name in library:
    return library[node.attr['f'].func.name]
  return None


def _tensor(name):
  """`name` as `node:index` (or `^node`), GraphDef's short forms expanded."""
  return name if name.startswith('^') or ':' in name else f'{name}:0'


def _resolve(scope, tensor):
  """The inlined graph's name for `tensor` of `scope`."""
  control = tensor.startswith('^')
  node, _, index = tensor.lstrip('^').partition(':')
  if node in scope.args:
    outer, source = scope.args[node]
    return _resolve(outer, '^' + source.split(':')[0] if control else source)
  if node in scope.calls:
    inner, outputs = scope.calls[node]
    if control:
      return _resolve(inner, '^' + outputs[0].split(':')[0])
    return _resolve(inner, outputs[int(index)])
  name = scope.names[node]
  if control:
    return f'^{name}'
  # GraphDef's short form for output 0, which TensorFlow's graph tools
  # (optimize_for_inference) match nodes by.
  return name if index == '0' else f'{name}:{index}'


def _scope_name(module_name):
  """`module_name` as a valid TensorFlow name scope (a local module's name
  is made from its path: `~tmp~my_module`)."""
  return re.sub(r'[^A-Za-z0-9_.-]', '_', module_name).lstrip('_-') or 'module'


def inline_functions(graph_def, module_name):
  """`graph_def` with every function call replaced by the function's body.

  The module arrives as one StatefulPartitionedCall; TensorBoard cannot open
  it. Its body (nested calls included) goes under one name scope named
  after the module, and the weight constants that fed the call move into
  that scope too, so the Graphs tab shows the module as one box that expands
  into its layers, as the original's hub.Module graph did. The bodies'
  control edges (TensorFlow's "reads finish before the function returns")
  and the NoOps that gather them are left out: they order nothing in a
  frozen graph and would tie every layer to one node.
  """
  if not graph_def.library.function:
    return graph_def  # Nothing to open up (a graph inlined already).
  library = {f.signature.name: f for f in graph_def.library.function}
  taken = set()
  emitted = []  # (scope, node) in the order they go into the new graph

  def unique(name):
    candidate, n = name, 0
    while candidate in taken:
      n += 1
      candidate = f'{name}_{n}'
    taken.add(candidate)
    return candidate

  # Each call of the top-level graph gets its scope, and the constants that
  # feed nothing but a call go into that call's scope.
  call_scopes = {node.name: unique(_scope_name(module_name)) + '/'
                 for node in graph_def.node
                 if _called_function(node, library)}
  consumers = {}
  for node in graph_def.node:
    for name in node.input:
      consumers.setdefault(_tensor(name).lstrip('^').split(':')[0],
                           []).append(node.name)

  def add(nodes, scope):
    for node in nodes:
      if node.name in scope.args or (scope.prefix and node.op == 'NoOp'):
        continue
      function = _called_function(node, library)
      if function is None:
        users = consumers.get(node.name, []) if not scope.prefix else []
        if node.op == 'Const' and users and all(u in call_scopes
                                                for u in users):
          scope.names[node.name] = unique(call_scopes[users[0]] + node.name)
        else:
          scope.names[node.name] = unique(scope.prefix + node.name)
        emitted.append((scope, node))
        continue
      body, flat = function_def_to_graph.function_def_to_graph_def(function)
      inner = _Scope(scope.prefix or call_scopes[node.name])
      data_inputs = [name for name in node.input if not name.startswith('^')]
      for arg, source in zip(function.signature.input_arg, data_inputs):
        inner.args[arg.name] = (scope, _tensor(source))
      outputs = [flat[function.ret[arg.name]]
                 for arg in function.signature.output_arg]
      scope.calls[node.name] = (inner, outputs)
      add(body.node, inner)

  graph = export.import_frozen(graph_def)  # Where function_def_to_graph finds ops.
  with graph.as_default():
    top = _Scope('')
    add(graph_def.node, top)
  inlined = tf.compat.v1.GraphDef()
  inlined.versions.CopyFrom(graph_def.versions)
  inlined.library.CopyFrom(graph_def.library)  # Loops' bodies stay functions.
  for scope, node in emitted:
    copy = inlined.node.add()
    copy.CopyFrom(node)
    copy.name = scope.names[node.name]
    del copy.input[:]
    copy.input.extend(_resolve(scope, _tensor(name)) for name in node.input
                      if not (scope.prefix and name.startswith('^')))
  return export.prune_functions(inlined)


def strip_weights(graph_def):
  """Leaves only dtype and shape in constants of more than a few values,
  those inside library functions too (a graph that takes one image at a time
  runs in a loop whose body holds the weights)."""
  nodes = list(graph_def.node)
  for function in graph_def.library.function:
    nodes.extend(function.node_def)
  for node in nodes:
    value = node.attr['value'].tensor if node.op == 'Const' else None
    if value is None or tf.TensorShape(value.tensor_shape).num_elements() <= (
        _SHOWN_CONSTANT_VALUES):
      continue
    value.CopyFrom(type(value)(dtype=value.dtype,
                               tensor_shape=value.tensor_shape))
  return graph_def


def tensorboard_graph_def(graph_def, module_name):
  """The exported graph as the Graphs tab should show it: the module's
  layers inlined under `module_name`, tensor shapes on the edges, and no
  weights (the weights are the frozen graph's job, and made each run's
  event file tens of megabytes)."""
  graph = export.import_frozen(inline_functions(graph_def, module_name))
  return strip_weights(graph.as_graph_def(add_shapes=True))


def write_graph_summary(graph_def, summaries_dir, module_name):
  """Puts the exported graph where TensorBoard's Graphs tab shows it, so a
  learner can read the input and output layer names there."""
  shown = tensorboard_graph_def(graph_def, module_name)
  with tf.Graph().as_default():  # FileWriter refuses to run eagerly.
    writer = summary_ops.event_writer(
        os.path.join(summaries_dir, 'retrained_graph'))
    writer.add_graph(None, graph_def=shown)
    writer.close()
