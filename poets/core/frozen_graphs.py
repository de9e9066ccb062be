"""Frozen graphs: read a .pb file, import it, find its layers by name.

What label_image.py and tflite_convert.py share about the graphs they are
given. A graph is imported under the `import/` prefix, as the codelab's
label_image.py did; a layer is found by the name users know, with or without
`import/` and `:0`, and a name that is not there is answered with the
candidates that are: placeholders and image tensors as inputs, softmax and
unused results as outputs. A file that is not a frozen graph (a folder, a
TensorFlow Lite model, anything else) is named for what it is.
"""

import dataclasses
import os
import re

from google.protobuf import message
import tensorflow as tf
from tensorflow.core.protobuf import saved_model_pb2

from poets import errors
from poets import files
from poets.core import graph_names
from poets.core import model_files
from poets.core import tflite_interpreter
from poets.errors import PoetsError

PREFIX = graph_names.IMPORT_PREFIX

# Ops that reach outside the process: files, checkpoints, summaries, the
# network, Python and the debugger. A classifier needs none of them, and a
# graph is a program: one that holds them is refused unless the user allows
# them (--allow_io_ops). A deny-list, so that the codelab's own graphs (whose
# Inception decodes JPEGs itself) still load.
IO_OPS = frozenset([
    'ReadFile', 'WriteFile', 'MatchingFiles', 'ImmutableConst',
    'Save', 'SaveV2', 'SaveSlices', 'Restore', 'RestoreV2', 'RestoreSlice',
    'MergeV2Checkpoints', 'LoadAndRemapMatrix', 'GenerateVocabRemapping',
    'InitializeTableFromTextFile', 'InitializeTableFromTextFileV2',
    'PyFunc', 'PyFuncStateless', 'EagerPyFunc',
    'Print', 'PrintV2', 'DecodeProtoV2', 'EncodeProto',
    'FileSystemSetConfiguration', 'ImportEvent'])
IO_OP_PATTERN = re.compile(
    r'Reader|Dataset|Summary|Writer|Rpc|^Debug|^Gcs|^BigQuery|Checkpoint|'
    r'^Load(TPU|Dataset)|^Save|^_(Host)?(Send|Recv)$')


@dataclasses.dataclass(frozen=True)
class Layer:
  """A candidate input or output, as --list_layers and errors show it."""
  name: str  # Without the import/ prefix.
  op_type: str
  dtype: str
  shape: str

  def __str__(self):
    kind = '' if self.op_type == 'Placeholder' else f' ({self.op_type})'
    return f'{self.name} {self.dtype} {self.shape}{kind}'


def parse_graph_def(data, path, flag='--graph'):
  """The GraphDef in `data` (read from `path`), or PoetsError saying what
  the file is instead."""
  fix = model_files.graph_fix(flag)
  if tflite_interpreter.is_tflite(data):
    raise PoetsError(f'{flag} {path} is already a TensorFlow Lite model, not '
                     f'a frozen GraphDef; {fix}.')
  graph_def = tf.compat.v1.GraphDef()
  try:
    graph_def.ParseFromString(data)
  except message.DecodeError as e:
    if path.lower().endswith(tflite_interpreter.EXTENSIONS):
      raise PoetsError(tflite_interpreter.not_tflite_message(path, flag)) from e
    raise PoetsError(f'{flag} {path} is not a frozen GraphDef ({e}); {fix}.'
                     ) from e
  if not graph_def.node:
    raise PoetsError(f'{flag} {path} is not a frozen GraphDef (it holds no '
                     f'operations); {fix}.')
  return graph_def


def io_ops(graph_def):
  """The ops of `graph_def` (its functions' too) that reach outside the
  process, sorted, each once."""
  ops = [node.op for node in graph_def.node]
  for function in graph_def.library.function:
    ops += [node.op for node in function.node_def]
  return sorted({op for op in ops if op in IO_OPS or IO_OP_PATTERN.search(op)})


def check_io_ops(graph_def, path, flag='--graph'):
  """Refuses, in one line naming them, a graph holding IO_OPS."""
  found = io_ops(graph_def)
  if found:
    raise PoetsError(
        f'{flag} {path} holds ops that reach outside this program '
        f'({", ".join(found)}): a classifier needs none, and they could read '
        'or write your files. Pass --allow_io_ops only if you trust where '
        'the graph came from.')


# How every SavedModel's variables are saved and restored: allowed there.
SAVED_MODEL_IO_OPS = frozenset(['SaveV2', 'RestoreV2', 'MergeV2Checkpoints'])


def check_saved_model_io_ops(folder, flag='--graph'):
  """check_io_ops for a SavedModel folder, before it is loaded (loading
  runs its restore and init ops); its variables' own ops are allowed."""
  data = files.read_regular_file(
      os.path.join(folder, 'saved_model.pb'), flag,
      model_files.MAX_MODEL_BYTES,
      'pass a SavedModel folder that retrain.py wrote (--saved_model_dir)')
  saved_model = saved_model_pb2.SavedModel()
  try:
    saved_model.ParseFromString(data)
  except message.DecodeError as e:
    raise PoetsError(f'{flag} {folder} holds a saved_model.pb that is not a '
                     f'SavedModel ({e}).') from e
  found = sorted({op for meta_graph in saved_model.meta_graphs
                  for op in io_ops(meta_graph.graph_def)} - SAVED_MODEL_IO_OPS)
  if found:
    raise PoetsError(
        f'{flag} {folder} holds ops that reach outside this program '
        f'({", ".join(found)}): a classifier needs none, and they could read '
        'or write your files. Pass --allow_io_ops only if you trust where '
        'the model came from.')


def load_graph_def(path, flag='--graph'):
  """Reads a frozen GraphDef, or raises PoetsError saying what `path` is."""
  return parse_graph_def(model_files.read_model_file(path, flag), path, flag)


def import_graph(graph_def, path, flag='--graph'):
  """A new graph holding `graph_def` under the import/ prefix."""
  graph = tf.Graph()
  with graph.as_default():
    try:
      tf.compat.v1.import_graph_def(graph_def, name=PREFIX)
    except (ValueError, tf.errors.OpError) as e:
      raise PoetsError(
          f'{flag} {path} cannot be loaded by this TensorFlow '
          f'({errors.first_line(e)}); re-export it with retrain.py.') from e
  return graph


def shape_text(tensor):
  """'[?,224,224,3]', as --list_layers and errors show a tensor's shape."""
  if tensor.shape.rank is None:
    return '<unknown>'
  return '[' + ','.join('?' if d is None else str(d)
                        for d in tensor.shape.as_list()) + ']'


def _layer(op):
  tensor = op.outputs[0]
  return Layer(op.name[len(PREFIX) + 1:], op.type, tensor.dtype.name,
               shape_text(tensor))


def _is_image(tensor):
  shape = tensor.shape
  return (tensor.dtype.is_floating and shape.rank == 4 and
          shape[1] is not None and shape[2] is not None and shape[3] == 3)


def input_candidates(graph):
  """Placeholders, and, in a graph without a float image placeholder such as
  the codelab's Inception one, the image tensors its decoding steps make."""
  placeholders = [op for op in graph.get_operations()
                  if op.type == 'Placeholder']
  if any(_is_image(op.outputs[0]) for op in placeholders):
    return [_layer(op) for op in placeholders]
  image_ops = [op for op in graph.get_operations()
               if op.outputs and op.type not in ('Placeholder', 'Const') and
               _is_image(op.outputs[0])]
  return [_layer(op) for op in placeholders + image_ops]


def inner_input_warning(tensor):
  """Says when an --input_layer tensor is an inner layer of a graph that has
  an image placeholder: the steps between them are skipped, so the layer
  gets pixels it was not trained on. None for a placeholder, and for graphs
  such as the codelab's Inception one, whose float input is an inner Mul."""
  if tensor.op.type == 'Placeholder':
    return None
  inputs = [op for op in tensor.graph.get_operations()
            if op.type == 'Placeholder' and _is_image(op.outputs[0])]
  if not inputs:
    return None
  layer = _layer(inputs[0])
  return (f"--input_layer '{_layer(tensor.op).name}' is an inner layer "
          f'({tensor.op.type}), not an input of the graph: what the graph '
          'does between its input and this layer is skipped, so the scores '
          f'differ from its own; pass --input_layer {layer.name} (its input, '
          f'{layer.dtype} {layer.shape}).')


def output_candidates(graph):
  """Softmax ops, then the ops whose results nothing else uses."""
  ignored = ('Const', 'NoOp', 'Placeholder', 'PlaceholderWithDefault')
  softmax = [op for op in graph.get_operations() if op.type == 'Softmax']
  terminal = [op for op in graph.get_operations()
              if op.outputs and op.type not in ignored + ('Softmax',) and
              not any(t.consumers() for t in op.outputs)]
  return [_layer(op) for op in softmax + terminal]


def describe_layers(graph):
  """The --list_layers text: which names --input_layer and --output_layer
  can take."""
  lines = ['Inputs (--input_layer):']
  lines += [f'  {l}' for l in input_candidates(graph)] or ['  (none)']
  lines.append('Outputs (--output_layer):')
  lines += [f'  {l}' for l in output_candidates(graph)] or ['  (none)']
  return '\n'.join(lines) + '\n'


def candidates_text(layers):
  """The layers an error offers instead of a name that is not there."""
  return ', '.join(str(l) for l in layers) or 'none'


def find_tensor(graph, name, flag, graph_path):
  """The tensor `name` names: `x`, `x:0`, `import/x` and `import/x:0` all
  work. Raises PoetsError naming the candidates when there is none."""
  op_name, _, index = name.strip().partition(':')
  if not index.isdigit() and index:
    raise PoetsError(f"{flag}={name} is not a layer name; pass a name such as "
                     f"'final_result' or 'final_result:0'.")
  names = [f'{PREFIX}/{op_name}']
  if op_name.startswith(f'{PREFIX}/'):
    names.append(op_name)
  for full_name in names:
    try:
      op = graph.get_operation_by_name(full_name)
    except KeyError:
      continue
    if int(index or 0) >= len(op.outputs):
      raise PoetsError(f"{flag}={name}: '{op_name}' has {len(op.outputs)} "
                       'outputs; drop the :N suffix.')
    return op.outputs[int(index or 0)]
  if flag.startswith('--input'):  # --input_layer, or tflite's --input_array
    kind, layers = 'inputs', input_candidates(graph)
  else:
    kind, layers = 'outputs', output_candidates(graph)
  bare = op_name[len(PREFIX) + 1:] if op_name.startswith(f'{PREFIX}/') else (
      op_name)
  raise PoetsError(f"{flag}: no operation '{bare}' in {graph_path}; its {kind} "
                   f'are: {candidates_text(layers)}.')
