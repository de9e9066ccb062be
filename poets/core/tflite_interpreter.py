"""Running a TensorFlow Lite model: label_image.py with a .tflite file.

LiteRT's interpreter (the `ai-edge-litert` package, which replaces the
deprecated `tf.lite.Interpreter`) runs the model. A converted model keeps
the names of the graph's input and output (`Placeholder`, `final_result`),
so label_image.py's layer flags work unchanged. A full-integer (int8) model
takes and gives int8 tensors: images are quantized with the input tensor's
scale and zero point on the way in, and scores dequantized on the way out.
"""

import contextlib
import dataclasses
import os
import sys
import tempfile

from ai_edge_litert.interpreter import Interpreter
import numpy as np

from poets import errors
from poets.errors import PoetsError

IDENTIFIER = b'TFL3'
EXTENSIONS = ('.tflite', '.lite')
INPUT_DTYPES = (np.float32, np.int8, np.uint8)
# What LiteRT prints to stderr when the first model is allocated.
_XNNPACK_NOTICE = 'Created TensorFlow Lite XNNPACK delegate for CPU.'


def is_tflite(data):
  """TensorFlow Lite flatbuffers carry the identifier TFL3 at bytes 4..8,
  whatever the file is called."""
  return data[4:8] == IDENTIFIER


def _fix(flag):
  return (f'convert the graph again (retrain.py --output_tflite, or '
          f'tflite_convert.py) and pass the new file as {flag}')


def not_tflite_message(path, flag):
  return (f'{flag} {path} is not a TensorFlow Lite model (no '
          f'{IDENTIFIER.decode()} identifier at bytes 4-8) nor a frozen '
          f'graph; {_fix(flag)}.')


@dataclasses.dataclass
class LiteModel:
  """A loaded model and the input and output tensors label_image uses."""
  interpreter: Interpreter
  path: str
  input: dict  # The interpreter's tensor details.
  output: dict


@contextlib.contextmanager
def _without_xnnpack_notice():
  """LiteRT prints an INFO line when it first sets up its CPU kernels and
  offers no switch for it; this keeps that line out of stderr and passes on
  anything else written meanwhile."""
  sys.stderr.flush()
  saved = os.dup(2)
  with tempfile.TemporaryFile() as captured:
    os.dup2(captured.fileno(), 2)
    try:
      yield
    finally:
      os.dup2(saved, 2)
      os.close(saved)
      captured.seek(0)
      lines = captured.read().decode(errors='replace').splitlines(True)
      sys.stderr.write(''.join(l for l in lines if _XNNPACK_NOTICE not in l))


def _allocate(model):
  try:
    with _without_xnnpack_notice():
      model.interpreter.allocate_tensors()
  except (ValueError, RuntimeError) as e:
    raise PoetsError(f'--graph {model.path} is a damaged TensorFlow Lite model '
                     f'({errors.first_line(e)}); {_fix("--graph")}.') from e


def shape_text(details):
  """[?,224,224,3]: the shape, ? where the model takes any size."""
  return '[' + ','.join('?' if d < 0 else str(d)
                        for d in details['shape_signature']) + ']'


def describe(details):
  """A tensor as --list_layers and errors show it."""
  text = f'{details["name"]} {np.dtype(details["dtype"]).name} ' + (
      shape_text(details))
  scale, zero_point = details['quantization']
  if scale:
    text += f' (scale {scale:.6g}, zero point {zero_point})'
  return text


def describe_layers(interpreter):
  """The --list_layers text for a .tflite model."""
  lines = ['Inputs (--input_layer):']
  lines += [f'  {describe(d)}' for d in interpreter.get_input_details()]
  lines.append('Outputs (--output_layer):')
  lines += [f'  {describe(d)}' for d in interpreter.get_output_details()]
  return '\n'.join(lines) + '\n'


def load_interpreter(data, path, flag='--graph', num_threads=None):
  """An interpreter for the model bytes `data`, read from `path`, on
  `num_threads` threads (None: every core, as TensorFlow uses)."""
  try:
    return Interpreter(model_content=data,
                       num_threads=num_threads or os.cpu_count())
  except (ValueError, RuntimeError) as e:
    raise PoetsError(f'{flag} {path} is a damaged TensorFlow Lite model '
                     f'({errors.first_line(e)}); {_fix(flag)}.') from e


def _find(details, name, flag, path, kind):
  """The tensor `name` names: `x`, `x:0`, `import/x` all work."""
  bare = name.strip().removeprefix('import/').split(':')[0]
  for tensor in details:
    if tensor['name'] in (bare, name.strip()):
      return tensor
  listed = ', '.join(describe(d) for d in details) or 'none'
  raise PoetsError(f"{flag}: no tensor '{bare}' in {path}; its {kind} are: "
                   f'{listed}.')


def load(data, path, input_layer, output_layer, num_threads=None):
  """The model in `data` with its input and output found by name."""
  interpreter = load_interpreter(data, path, num_threads=num_threads)
  model = LiteModel(
      interpreter, path,
      _find(interpreter.get_input_details(), input_layer, '--input_layer',
            path, 'inputs'),
      _find(interpreter.get_output_details(), output_layer, '--output_layer',
            path, 'outputs'))
  details = model.input
  signature = details['shape_signature']
  if details['dtype'] not in INPUT_DTYPES:
    raise PoetsError(
        f"--input_layer '{details['name']}' of {path} is a "
        f"{np.dtype(details['dtype']).name} tensor, but label_image feeds "
        'images (float32, or int8/uint8 quantized); pick an image input: '
        f'{", ".join(describe(d) for d in interpreter.get_input_details())}.')
  if len(signature) != 4 or signature[3] != 3 or min(signature[1:]) < 1:
    raise PoetsError(
        f"--input_layer '{details['name']}' of {path} has shape "
        f'{shape_text(details)}, not a batch of RGB images '
        '[N,height,width,3] of a fixed size.')
  if details['dtype'] != np.float32 and not details['quantization'][0]:
    raise PoetsError(f"--input_layer '{details['name']}' of {path} is "
                     f'{np.dtype(details["dtype"]).name} without a scale to '
                     f'quantize images with; {_fix("--graph")}.')
  _allocate(model)
  return model


def image_size(model):
  return tuple(int(d) for d in model.input['shape'][1:3])


def fixed_batch(model):
  """The batch size the model insists on, or None if it takes any."""
  batch = model.input['shape_signature'][0]
  return None if batch < 0 else int(batch)


def quantize(pixels, details):
  """Float input -> the tensor's integer type by its scale and zero point."""
  dtype = details['dtype']
  if dtype == np.float32:
    return pixels.astype(np.float32)
  scale, zero_point = details['quantization']
  limits = np.iinfo(dtype)
  return np.clip(np.round(pixels / scale + zero_point), limits.min,
                 limits.max).astype(dtype)


def dequantize(values, details):
  scale, zero_point = details['quantization']
  if values.dtype == np.float32 or not scale:
    return values.astype(np.float32)
  return (values.astype(np.float32) - zero_point) * scale


def run(model, pixels):
  """Scores for a batch of normalized images [N,H,W,3]; a model that takes
  any batch size is resized to N first (only when N changes)."""
  interpreter, details = model.interpreter, model.input
  if tuple(details['shape']) != pixels.shape:
    interpreter.resize_tensor_input(details['index'], pixels.shape)
    _allocate(model)
    model.input = next(d for d in interpreter.get_input_details()
                       if d['index'] == details['index'])
  interpreter.set_tensor(details['index'], quantize(pixels, details))
  try:
    interpreter.invoke()
  except RuntimeError as e:
    raise PoetsError(f'--graph {model.path} failed to run '
                     f'({errors.first_line(e)}); {_fix("--graph")}.') from e
  return dequantize(interpreter.get_tensor(model.output['index']),
                    model.output)
