"""Export: the frozen graph, the labels file and the SavedModel.

The fifth stage. The frozen `.pb` is built from an evaluation graph (the
module and the new layer, no training ops): the module is loaded afresh, the
trained layer restored from the checkpoint, variables turned into constants,
and everything `final_result` does not need pruned, functions included. Its
input is `Placeholder` (float32 [None, H, W, 3] in [0, 1]) and its output the
`--final_tensor_name` softmax, as in the original hub-based retrain.py.
"""

import os
import shutil

import tensorflow as tf

from poets import files
from poets import modules
from poets import training
from poets.errors import PoetsError

INPUT_NAME = 'Placeholder'


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


def frozen_graph_def(module_spec, class_count, final_tensor_name, layer):
  """The evaluation graph with the trained layer, frozen and pruned.

  `layer` holds the layer's variable values by name (TrainingResult.layer).
  """
  graph = tf.Graph()
  with graph.as_default():
    module = modules.load_module(module_spec)
    height, width = module.image_size
    resized_input = tf.compat.v1.placeholder(
        tf.float32, [None, height, width, 3], name=INPUT_NAME)
    if resized_input.op.name != INPUT_NAME:
      raise AssertionError(f'input placeholder became {resized_input.name}')
    final_layer = training.add_final_retrain_ops(
        class_count, final_tensor_name, module.apply(resized_input))
    init = tf.compat.v1.global_variables_initializer()
  with tf.compat.v1.Session(graph=graph) as session:
    session.run(init)
    for variable in training.layer_variables_of(graph):
      variable.load(layer[variable.op.name], session)
    return freeze(session, final_layer.final_tensor.op.name)


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


def write_graph_summary(graph_def, summaries_dir):
  """Puts the exported graph where TensorBoard's Graphs tab shows it, so a
  learner can read the input and output layer names there."""
  graph = import_frozen(graph_def)
  with graph.as_default():
    writer = training.event_writer(
        os.path.join(summaries_dir, 'retrained_graph'), graph)
    writer.close()


# Written into every SavedModel export, listing what the export holds: a
# folder with this file and nothing else is one retrain.py may replace.
EXPORT_MARKER = 'written_by_retrain.txt'


def _files_under(folder):
  return sorted(os.path.relpath(os.path.join(root, name), folder)
                for root, _, names in os.walk(folder) for name in names)


def _strangers(saved_model_dir):
  """Files in an earlier export that the export did not write (all of them
  if it has no marker)."""
  marker = os.path.join(saved_model_dir, EXPORT_MARKER)
  present = _files_under(saved_model_dir)
  if not os.path.isfile(marker):
    return present
  with open(marker, errors='surrogateescape') as f:
    written = set(f.read().splitlines()[1:]) | {EXPORT_MARKER}
  return [name for name in present if name not in written]


def check_saved_model_dir(saved_model_dir, flag='--saved_model_dir'):
  """Refuses, in one line, a --saved_model_dir that export may not replace:
  a file, or a folder holding anything an earlier export did not write."""
  if os.path.lexists(saved_model_dir) and not os.path.isdir(saved_model_dir):
    raise PoetsError(f'{flag} {saved_model_dir} is a file; pass a folder '
                     'path (retrain.py replaces only its own exports).')
  if os.path.isdir(saved_model_dir):
    strangers = _strangers(saved_model_dir)
    if strangers:
      raise PoetsError(
          f'{flag} {saved_model_dir} holds files retrain.py did not write '
          f'({strangers[0]}{", ..." if len(strangers) > 1 else ""}); choose '
          'another folder or move them away.')
    files.check_writable(saved_model_dir, flag)
  files.check_writable(os.path.dirname(os.path.abspath(saved_model_dir)),
                       flag)


def export_saved_model(graph_def, saved_model_dir, final_tensor_name):
  """A SavedModel whose serving signature maps `image` to `prediction`.

  Built in a temporary folder and swapped in, so a failure (or Ctrl-C)
  leaves any previous export intact and no temporary folder behind. Only an
  empty folder or an earlier export, recognised by its EXPORT_MARKER, is
  replaced.
  """
  check_saved_model_dir(saved_model_dir)
  graph = import_frozen(graph_def)
  built = files.temporary_sibling(saved_model_dir)
  try:
    os.rmdir(built)  # The builder insists on creating the folder itself.
    with tf.compat.v1.Session(graph=graph) as session:
      signature = tf.compat.v1.saved_model.predict_signature_def(
          inputs={'image': graph.get_tensor_by_name(f'{INPUT_NAME}:0')},
          outputs={'prediction': graph.get_tensor_by_name(
              f'{final_tensor_name}:0')})
      builder = tf.compat.v1.saved_model.Builder(built)
      builder.add_meta_graph_and_variables(
          session, [tf.compat.v1.saved_model.SERVING],
          signature_def_map={'serving_default': signature})
      builder.save()
    files.atomic_write(os.path.join(built, EXPORT_MARKER), ''.join(
        f'{line}\n' for line in [
            'retrain.py wrote this SavedModel and replaces it on its next '
            'export here; it will not replace a folder holding anything '
            'else. The files it wrote:'] + _files_under(built)))
    files.replace_directory(built, saved_model_dir)
  except BaseException:
    shutil.rmtree(built, ignore_errors=True)
    raise
