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

import dataclasses
import os
import re
import shutil

import tensorflow as tf
import tensorflow_hub as hub
from tensorflow.python.framework import function_def_to_graph

from poets import efficientnet_lite
from poets import files
from poets import modules
from poets import training
from poets.errors import PoetsError

INPUT_NAME = 'Placeholder'
# label_image.py --imagenet: the embedded module's own classifier, frozen once.
IMAGENET_GRAPH = 'tf_files/imagenet_graph.pb'
IMAGENET_LABELS = 'tf_files/imagenet_labels.txt'


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

  def __init__(self, module_spec, class_count, final_tensor_name):
    self._module_spec = module_spec
    self._class_count = class_count
    self._final_tensor_name = final_tensor_name
    self._session = None

  def _build(self):
    graph = tf.Graph()
    with graph.as_default():
      module = modules.load_module(self._module_spec)
      height, width = module.image_size
      resized_input = tf.compat.v1.placeholder(
          tf.float32, [None, height, width, 3], name=INPUT_NAME)
      if resized_input.op.name != INPUT_NAME:
        raise AssertionError(f'input placeholder became {resized_input.name}')
      final_layer = training.add_final_retrain_ops(
          self._class_count, self._final_tensor_name,
          module.apply(resized_input))
      init = tf.compat.v1.global_variables_initializer()
    self._session = tf.compat.v1.Session(graph=graph)
    self._session.run(init)
    self._variables = training.layer_variables_of(graph)
    self._output = final_layer.final_tensor.op.name

  def freeze(self, layer):
    """The graph with `layer` (TrainingResult.layer: the layer's variable
    values by name), frozen and pruned."""
    if self._session is None:
      self._build()
    with self._session.graph.as_default():  # Variable.load needs it.
      for variable in self._variables:
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
  return f'^{name}' if control else f'{name}:{index}'


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

  graph = import_frozen(graph_def)  # Where function_def_to_graph finds ops.
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
  return prune_functions(inlined)


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
  graph = import_frozen(inline_functions(graph_def, module_name))
  return strip_weights(graph.as_graph_def(add_shapes=True))


def write_graph_summary(graph_def, summaries_dir, module_name):
  """Puts the exported graph where TensorBoard's Graphs tab shows it, so a
  learner can read the input and output layer names there."""
  shown = tensorboard_graph_def(graph_def, module_name)
  with tf.Graph().as_default():  # FileWriter refuses to run eagerly.
    writer = training.event_writer(
        os.path.join(summaries_dir, 'retrained_graph'))
    writer.add_graph(None, graph_def=shown)
    writer.close()


def check_saved_model_dir(saved_model_dir, flag='--saved_model_dir'):
  """Refuses, in one line, a --saved_model_dir that export may not replace:
  a file, or a folder holding anything an earlier export did not write."""
  if os.path.lexists(saved_model_dir) and not os.path.isdir(saved_model_dir):
    raise PoetsError(f'{flag} {saved_model_dir} is a file; pass a folder '
                     'path (retrain.py replaces only its own exports).')
  files.check_ours(saved_model_dir, flag,
                   'choose another folder or move them away')
  if os.path.isdir(saved_model_dir):
    files.check_writable(saved_model_dir, flag)
  files.check_writable(os.path.dirname(os.path.abspath(saved_model_dir)),
                       flag)


def build_saved_model(graph_def, folder, final_tensor_name):
  """Writes a SavedModel whose serving signature maps `image` to
  `prediction` into the new, empty `folder`, marked as retrain.py's."""
  graph = import_frozen(graph_def)
  os.rmdir(folder)  # The builder insists on creating the folder itself.
  with tf.compat.v1.Session(graph=graph) as session:
    signature = tf.compat.v1.saved_model.predict_signature_def(
        inputs={'image': graph.get_tensor_by_name(f'{INPUT_NAME}:0')},
        outputs={'prediction': graph.get_tensor_by_name(
            f'{final_tensor_name}:0')})
    builder = tf.compat.v1.saved_model.Builder(folder)
    builder.add_meta_graph_and_variables(
        session, [tf.compat.v1.saved_model.SERVING],
        signature_def_map={'serving_default': signature})
    builder.save()
  files.mark_ours(folder, files.files_under(folder), 'retrain.py')


def export_saved_model(graph_def, saved_model_dir, final_tensor_name):
  """build_saved_model in a temporary folder, swapped in, so a failure (or
  Ctrl-C) leaves any previous export intact and no temporary folder behind.
  Only an empty folder or an earlier export, recognised by its
  files.OWNER_MARKER, is replaced."""
  check_saved_model_dir(saved_model_dir)
  built = files.temporary_sibling(saved_model_dir)
  try:
    build_saved_model(graph_def, built, final_tensor_name)
    files.replace_directory(built, saved_model_dir)
  except BaseException:
    shutil.rmtree(built, ignore_errors=True)
    raise


def export_imagenet_graph(graph_path=IMAGENET_GRAPH,
                          labels_path=IMAGENET_LABELS,
                          architecture=modules.DEFAULT_ARCHITECTURE,
                          model_dir='tf_files/models'):
  """Freezes the embedded module's ImageNet classifier like a retrained graph
  (input Placeholder in [0, 1], output final_result), so a newcomer can try
  label_image on a photo before retraining anything."""
  module_path = efficientnet_lite.ensure_module(architecture, model_dir)
  size = efficientnet_lite.get_variant(architecture).image_size
  graph = tf.Graph()
  with graph.as_default():
    image_input = tf.compat.v1.placeholder(
        tf.float32, [None, size, size, 3], name=INPUT_NAME)
    logits = hub.load(module_path).imagenet_logits(image_input)
    probabilities = tf.nn.softmax(logits, name='final_result')
    init = tf.compat.v1.global_variables_initializer()
  with tf.compat.v1.Session(graph=graph) as session:
    session.run(init)
    graph_def = freeze(session, probabilities.op.name)
  save_graph(graph_def, graph_path)
  save_labels(efficientnet_lite.imagenet_labels(), labels_path)
