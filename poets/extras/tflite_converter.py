"""TensorFlow Lite: the retrained graph as a phone-sized model.

The codelab's second half ("TensorFlow for Poets 2") converted
retrained_graph.pb with `toco`, later `tflite_convert`, and put the .tflite
file into an Android app; its quantized path broke as TensorFlow moved on.
Here the export stage (retrain.py --output_tflite) and tflite_convert.py run
TensorFlow's converter on a frozen graph in one of three ways:

  none     float32, as the .pb: the same scores to about 1e-6.
  dynamic  weights stored as int8, arithmetic in float: about 1/4 the size.
  int8     full-integer: weights and activations int8 (each tensor with a
           scale and zero point), calibrated on a few hundred photos decoded
           and resized exactly as for the bottlenecks; input and output are
           uint8, the camera's pixels and what MediaPipe Tasks takes.

Every .tflite carries its labels and its input's normalization as metadata
(poets.core.tflite_metadata), so MediaPipe Tasks loads it alone.
"""

import contextlib
import os

from absl import logging
import numpy as np
import tensorflow as tf

from poets import errors
from poets import files
from poets import settings
from poets import startup
from poets.core import export
from poets.core import frozen_graphs
from poets.core import image_decoding
from poets.core import image_listing
from poets.core import labels_file
from poets.core import tflite_interpreter
from poets.core import tflite_metadata
from poets.errors import PoetsError



def check_quantization(quantization, flag):
  if quantization not in settings.QUANTIZATIONS:
    raise PoetsError(f'{flag}={quantization} is not one of '
                     f'{", ".join(settings.QUANTIZATIONS)}.')


def calibration_images(paths, count=settings.CALIBRATION_IMAGES):
  """At most `count` of `paths`, evenly spaced: a list sorted by class gives
  every class its share, and the choice is the same every run."""
  if len(paths) <= count:
    return list(paths)
  return [paths[i] for i in np.linspace(0, len(paths) - 1, count).round()
          .astype(int)]


class _Calibration:
  """The representative dataset: one normalized image per sample, decoded in
  parallel; images that do not decode are left out and counted.

  A black and a white image come first, so the input's range is exactly
  the pixels' range: the uint8 input then takes a camera's pixel values
  unchanged, as MediaPipe Tasks feeds them.
  """

  def __init__(self, paths, height, width, input_mean, input_std):
    self.paths = paths
    self.used = 0
    self._extremes = [np.full([1, height, width, 3], (pixel - input_mean) /
                              input_std, np.float32) for pixel in (0, 255)]
    self._dataset = image_decoding.in_parallel_batches(
        tf.data.Dataset.from_tensor_slices(image_decoding.file_names(paths)),
        lambda path: image_decoding.decode_and_normalize(
            tf.io.read_file(path), height, width, input_mean, input_std),
        1, skip_failures=True)

  def __call__(self):
    for image in self._extremes:
      yield [image]
    for batch in self._dataset:
      self.used += 1
      yield [batch.numpy()]


@contextlib.contextmanager
def _quiet_converter():
  """The converter logs 'Using experimental converter: If you encountered a
  problem please file a bug' at INFO on every call, and prints its int8
  settings to stderr; neither is for our users."""
  with startup.warnings_only(), startup.without_library_lines():
    yield


def _image_size(tensor, what):
  shape = tensor.shape
  if shape.rank != 4 or shape[1] is None or shape[2] is None:
    raise PoetsError(f'{what} has shape {shape}, not a fixed image size '
                     '[N,height,width,3]; TensorFlow Lite needs one.')
  return shape[1], shape[2]


def convert(graph_def, input_name, output_name, quantization,
            calibration_paths=(), input_mean=0.0, input_std=255.0,
            what='the graph'):
  """The .tflite bytes of a frozen graph from `input_name` to `output_name`
  (tensor names; `x` means `x:0`). int8 calibrates on `calibration_paths`,
  normalized as the graph's input expects ((pixel - input_mean) /
  input_std). Raises PoetsError naming `what` when the converter refuses."""
  check_quantization(quantization, '--quantization')
  graph = export.import_frozen(graph_def)
  input_tensor, output_tensor = [
      graph.get_tensor_by_name(name if ':' in name else f'{name}:0')
      for name in (input_name, output_name)]
  converter = tf.compat.v1.lite.TFLiteConverter(graph_def, [input_tensor],
                                                [output_tensor])
  calibration = None
  if quantization in ('dynamic', 'int8'):
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
  if quantization == 'int8':
    if not calibration_paths:
      raise PoetsError('int8 needs calibration photos, and none were given; '
                       'pass photos like the ones the model will label.')
    height, width = _image_size(input_tensor, f"{what}'s input {input_name}")
    calibration = _Calibration(list(calibration_paths), height, width,
                               input_mean, input_std)
    converter.representative_dataset = calibration
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    converter.inference_input_type = tf.uint8
    converter.inference_output_type = tf.uint8
  try:
    with _quiet_converter():
      model = converter.convert()
  except Exception as e:  # The converter raises many types; all mean "no".
    hint = ('; try --quantization dynamic, which keeps float arithmetic'
            if quantization == 'int8' else '')
    raise PoetsError(f'TensorFlow Lite cannot convert {what} '
                     f'({errors.first_line(e)}){hint}.') from e
  # Without samples the converter still makes a model, with made-up ranges.
  if calibration is not None and not calibration.used:
    raise PoetsError(
        f'int8 needs calibration photos, but none of the '
        f'{len(calibration.paths)} given could be decoded; pass photos like '
        'the ones the model will label.')
  logging.info('Converted %s to TensorFlow Lite (%s): %.1f MB%s.', what,
               quantization, len(model) / 1e6,
               f', calibrated on {calibration.used} images'
               if calibration else '')
  return model


def check_replaceable(output_file, graph_def_file):
  """Refuses an --output_file that is the input graph, or an existing file
  that is not a TensorFlow Lite model: only models are replaced."""
  if os.path.exists(output_file) and os.path.samefile(output_file,
                                                      graph_def_file):
    raise PoetsError(f'--output_file {output_file} is the --graph_def_file '
                     'itself; pass another name, such as '
                     'tf_files/optimized_graph.tflite.')
  if not os.path.lexists(output_file):
    return
  try:
    with open(output_file, 'rb') as f:
      ours = os.path.isfile(output_file) and tflite_interpreter.is_tflite(f.read(8))
  except OSError:
    ours = False
  if not ours:
    raise PoetsError(f'--output_file {output_file} exists and is not a '
                     'TensorFlow Lite model, so it is not replaced; pass '
                     'another name, such as tf_files/optimized_graph.tflite.')


def save_model(model, path):
  files.atomic_write(path, model)


def convert_graph_file(config):
  """Converts `config.graph_def_file` and writes `config.output_file`;
  returns the model's size in bytes. Raises PoetsError."""
  check_quantization(config.quantization, '--quantization')
  settings.check_input_std(config.input_std)
  if config.quantization == 'int8' and not config.image_dir:
    raise PoetsError('--quantization int8 calibrates on photos; pass '
                     '--image_dir a folder of photos like the ones the model '
                     'will label (a few hundred are used).')
  if os.path.isdir(config.output_file):
    raise PoetsError(f'--output_file {config.output_file} is a folder; pass '
                     'a file name such as tf_files/optimized_graph.tflite.')
  check_replaceable(config.output_file, config.graph_def_file)
  files.check_writable(os.path.dirname(config.output_file), '--output_file')
  labels = labels_file.read(config.labels)
  calibration_paths = []
  if config.quantization == 'int8':
    calibration_paths = calibration_images(
        image_listing.given_images([], config.image_dir))
  path = config.graph_def_file
  graph_def = frozen_graphs.load_graph_def(path, '--graph_def_file')
  if not config.allow_io_ops:
    # The converter runs what it can of a graph while it folds constants.
    frozen_graphs.check_io_ops(graph_def, path, '--graph_def_file')
  graph = frozen_graphs.import_graph(graph_def, path, '--graph_def_file')
  names = [frozen_graphs.find_tensor(graph, name, flag, path).name
           .removeprefix(f'{frozen_graphs.PREFIX}/')
           for name, flag in ((config.input_array, '--input_array'),
                              (config.output_array, '--output_array'))]
  model = convert(graph_def, *names, config.quantization, calibration_paths,
                  config.input_mean, config.input_std, path)
  model = tflite_metadata.add_metadata(
      model, labels, config.input_mean, config.input_std,
      labels_source=f'--labels {config.labels}')
  save_model(model, config.output_file)
  return len(model)
