"""Labeling: run a frozen graph on photos and name the top classes.

The last stage, what label_image.py does. poets.core.frozen_graphs reads the
graph and finds its layers by the names users know. Images get the pixels
retrain.py gave them (poets.core.image_decoding's decode and bilinear
resize) and then
(pixel - input_mean) / input_std, so the defaults (0, 255) reproduce exactly
the [0, 1] input of this project's graphs. A tf.data pipeline decodes the
images in parallel and the graph runs on batches of them; an image that
cannot be read or decoded is reported and the others are still labelled.
A TensorFlow Lite model, told apart from a graph by its content, takes the
same flags and gets the same pixels; poets.core.tflite_interpreter runs it,
and the labels packed in it (poets.core.tflite_metadata) serve when no
labels file is named.
"""

import contextlib
import dataclasses
import hashlib
import os
import time
from typing import Callable

import numpy as np
import tensorflow as tf

from poets import errors
from poets import outputs
from poets import settings
from poets.core import frozen_graphs
from poets.core import graph_names
from poets.core import image_decoding
from poets.core import image_listing
from poets.core import labels_file
from poets.core import tflite_interpreter
from poets.core import tflite_metadata
from poets.errors import PoetsError

@dataclasses.dataclass(frozen=True)
class Convention:
  """The input range that graphs from one source were trained on."""
  input_layer: str
  output_layer: str | None  # None: whatever the output is called.
  low: float
  high: float
  flags: str
  source: str


# What makes a mean/std that does not match training visible: graphs whose
# input is known by name and whose pixel range is known.
CONVENTIONS = (
    Convention(graph_names.INPUT_NAME, None, 0.0, 1.0,
               '--input_mean=0 --input_std=255',
               "this project's and TF Hub's retrain.py"),
    Convention('Mul', None, -1.0, 1.0, '--input_mean=128 --input_std=128',
               "the codelab's and TensorFlow's Inception v3 retrain.py"),
    Convention('input', 'final_result', -1.0, 1.0,
               '--input_mean=128 --input_std=128',
               "the codelab's MobileNet retrain.py"),
)


@dataclasses.dataclass
class Prediction:
  label: str
  score: float


@dataclasses.dataclass
class ImageResult:
  image: str
  predictions: list[Prediction]
  error: str | None = None


@dataclasses.dataclass
class LabelRun:
  """The results in input order, and the time spent in the graph."""
  results: list[ImageResult]
  seconds: float
  batches: int
  warnings: list[str]

  @property
  def labelled(self):
    return [r for r in self.results if r.error is None]


def list_layers(graph_path):
  """The --list_layers answer for the graph or .tflite file at
  `graph_path`."""
  data = frozen_graphs.read_model_file(graph_path)
  if tflite_interpreter.is_tflite(data):
    return tflite_interpreter.describe_layers(
        tflite_interpreter.load_interpreter(data, graph_path))
  graph_def = frozen_graphs.parse_graph_def(data, graph_path)
  return frozen_graphs.describe_layers(
      frozen_graphs.import_graph(graph_def, graph_path))


def _mismatch(graph_def, labels_data, labels_path, config):
  """Why the labels are not the ones written with `graph_def`, or None.

  Only graphs and labels from retrain.py can tell: a run id in the graph
  and a manifest beside the labels (see poets/outputs.py)."""
  graph_id = graph_def and outputs.run_id_of(graph_def)
  manifest = outputs.read_manifest(labels_path)
  if not graph_id or manifest is None:
    return None
  if manifest.get('run_id') != graph_id:
    return (f'--labels {labels_path} was written by another run than '
            f'--graph {config.graph} (see '
            f'{outputs.manifest_path(labels_path)}); pass the labels file '
            'written with this graph.')
  if manifest.get('labels_sha256') != hashlib.sha256(labels_data).hexdigest():
    return (f'--labels {labels_path} changed since retrain.py wrote it '
            f'with --graph {config.graph}; pass the labels file written with '
            'this graph, or rerun retrain.py.')
  return None


def read_model_and_labels(config):
  """(model bytes, its GraphDef or None for a .tflite, labels or None for a
  .tflite's own), read one right after the other and checked to belong
  together; read again once if not, in case a run was replacing them."""
  for attempt in range(2):
    data = frozen_graphs.read_model_file(config.graph)
    graph_def = None
    if not tflite_interpreter.is_tflite(data):
      graph_def = frozen_graphs.parse_graph_def(data, config.graph)
    elif config.labels is None:
      return data, None, None
    path = config.labels or settings.DEFAULT_LABELS
    labels_data = labels_file.read_bytes(path)
    problem = _mismatch(graph_def, labels_data, path, config)
    if problem is None:
      return data, graph_def, labels_file.decode(labels_data)
    if attempt == 0:
      time.sleep(0.5)
  raise PoetsError(problem)


def _check_labels(labels, source, classes, config):
  if len(labels) != classes:
    raise PoetsError(
        f'{source} has {len(labels)} labels but '
        f"--output_layer '{config.output_layer}' of {config.graph} gives "
        f'{classes} scores; pass the labels file written with this graph.')


def _input_size(tensor, config):
  """Height and width: the flags, else the input's static shape, else 224."""
  name = config.input_layer
  shape_text = frozen_graphs.shape_text(tensor)
  pick = ('pick an image input: ' + frozen_graphs.candidates_text(
      frozen_graphs.input_candidates(tensor.graph)))
  if not tensor.dtype.is_floating:
    raise PoetsError(
        f"--input_layer '{name}' is a {tensor.dtype.name} tensor, but "
        f'label_image feeds decoded float images; {pick}.')
  shape = tensor.shape
  if shape.rank is not None and (shape.rank != 4 or shape[3] not in (None,
                                                                     3)):
    raise PoetsError(
        f"--input_layer '{name}' has shape {shape_text}, not a batch of "
        f'RGB images [N,height,width,3]; {pick}.')
  static = shape.as_list() if shape.rank else [None] * 4
  return _image_size(config, static[1], static[2], shape_text)


def _image_size(config, static_height, static_width, shape_text):
  """Height and width: the flags, else the input's static shape, else 224;
  a flag that contradicts a static size is an error."""
  size = []
  for flag, value, static in (
      ('--input_height', config.input_height, static_height),
      ('--input_width', config.input_width, static_width)):
    if value and static and value != static:
      raise PoetsError(f"{flag}={value} but --input_layer "
                       f"'{config.input_layer}' takes {shape_text} images; "
                       f'drop {flag}.')
    size.append(value or static or settings.DEFAULT_INPUT_SIZE)
  return tuple(size)


def convention_warnings(config):
  """Says when mean/std put pixels outside the range a known graph expects:
  wrong normalization gives confident, wrong scores and no error."""
  low = (0.0 - config.input_mean) / config.input_std
  high = (255.0 - config.input_mean) / config.input_std
  prefix = f'{frozen_graphs.PREFIX}/'
  input_name = config.input_layer.split(':')[0].removeprefix(prefix)
  output_name = config.output_layer.split(':')[0].removeprefix(prefix)
  warnings = []
  for c in CONVENTIONS:
    if c.input_layer != input_name or c.output_layer not in (None,
                                                             output_name):
      continue
    if abs(low - c.low) > 0.05 or abs(high - c.high) > 0.05:
      warnings.append(
          f"graphs from {c.source} take --input_layer={c.input_layer} in "
          f'[{c.low:g}, {c.high:g}] ({c.flags}); --input_mean='
          f'{config.input_mean:g} --input_std={config.input_std:g} gives '
          f'[{low:.3g}, {high:.3g}], so the scores will be wrong unless this '
          'graph was trained that way.')
  return warnings


def _read_error(path, failure):
  """Why an image was dropped from the pipeline, as one line."""
  if not os.path.exists(path):
    return f'{path}: not found; check the path.'
  if os.path.isdir(path):
    return f'{path}: is a folder; pass it with --image_dir.'
  if not os.path.isfile(path):
    return f'{path}: not a regular file (a pipe or a device); pass a photo.'
  if failure is None:
    return f'{path}: could not be decoded.'
  if failure.unreadable:
    return f'{path}: cannot read it ({failure.reason}).'
  return f'{path}: cannot decode it as an image ({failure.reason})'


def _top(scores, labels, top_k):
  order = np.argsort(-scores, kind='stable')[:top_k]
  return [Prediction(labels[i], float(scores[i])) for i in order]


@dataclasses.dataclass
class _Classifier:
  """What labeling needs of a model, whichever kind of file it came from."""
  height: int
  width: int
  fixed_batch: int | None  # None: any batch size.
  classes: int | None  # None: known only once it has run.
  scores: Callable[[np.ndarray], np.ndarray]  # [N,H,W,3] -> [N,classes]
  labels: list[str] | None = None  # Those the model carries, if any.
  warnings: list[str] = dataclasses.field(default_factory=list)


def _session_classifier(session, input_tensor, output_tensor, config):
  height, width = _input_size(input_tensor, config)
  known = output_tensor.shape.rank and output_tensor.shape[-1] is not None
  return _Classifier(
      height, width,
      # A graph exported for one image at a time (the codelab's Mul is
      # [1,299,299,3]) gets batches of exactly its size, padded at the end.
      input_tensor.shape[0] if input_tensor.shape.rank else None,
      output_tensor.shape[-1] if known else None,
      lambda pixels: session.run(output_tensor, {input_tensor: pixels}))


@contextlib.contextmanager
def _graph_classifier(graph_def, config):
  if not config.allow_io_ops:
    frozen_graphs.check_io_ops(graph_def, config.graph)
  graph = frozen_graphs.import_graph(graph_def, config.graph)
  input_tensor = frozen_graphs.find_tensor(graph, config.input_layer,
                                           '--input_layer', config.graph)
  output_tensor = frozen_graphs.find_tensor(graph, config.output_layer,
                                            '--output_layer', config.graph)
  inner = frozen_graphs.inner_input_warning(input_tensor)
  with tf.compat.v1.Session(graph=graph) as session:
    classifier = _session_classifier(session, input_tensor, output_tensor,
                                     config)
    classifier.warnings.extend(filter(None, [inner]))
    yield classifier


def is_saved_model(path):
  return os.path.isfile(os.path.join(path, 'saved_model.pb'))


@contextlib.contextmanager
def _saved_model_classifier(config):
  """A SavedModel folder (retrain.py --saved_model_dir): the one input and
  output of its serving signature, whatever the layer flags say."""
  path = config.graph
  if not config.allow_io_ops:
    frozen_graphs.check_saved_model_io_ops(path)
  with tf.compat.v1.Session(graph=tf.Graph()) as session:
    try:
      signature = tf.compat.v1.saved_model.load(
          session, [tf.compat.v1.saved_model.SERVING],
          path).signature_def.get('serving_default')
    except (RuntimeError, OSError, ValueError, tf.errors.OpError) as e:
      raise PoetsError(f'--graph {path} is a SavedModel this TensorFlow '
                       f'cannot load ({errors.first_line(e)}); '
                       're-export it with retrain.py --saved_model_dir.'
                       ) from e
    if signature is None or len(signature.inputs) != 1 or len(
        signature.outputs) != 1:
      raise PoetsError(f'--graph {path} is a SavedModel without a '
                       'serving_default signature of one input and one '
                       'output; export it with retrain.py --saved_model_dir.')
    input_tensor, output_tensor = [
        session.graph.get_tensor_by_name(next(iter(tensors.values())).name)
        for tensors in (signature.inputs, signature.outputs)]
    yield _session_classifier(session, input_tensor, output_tensor, config)


@contextlib.contextmanager
def _tflite_classifier(data, config):
  model = tflite_interpreter.load(data, config.graph, config.input_layer,
                                  config.output_layer)
  height, width = _image_size(config, *tflite_interpreter.image_size(model),
                              tflite_interpreter.shape_text(model.input))
  yield _Classifier(height, width, tflite_interpreter.fixed_batch(model),
                    int(model.output['shape'][-1]),
                    lambda pixels: tflite_interpreter.run(model, pixels),
                    tflite_metadata.read_labels(data))


def label_images(config):
  """Labels every image of `config` with a frozen graph, a TensorFlow Lite
  model (told apart by content) or a SavedModel folder; returns a LabelRun.
  Raises PoetsError for a problem with the model, labels or flags; a bad
  image only gets an error in its ImageResult."""
  settings.check_input_std(config.input_std)
  if config.top_k < 1 or config.batch_size < 1:
    raise PoetsError('--top_k and --batch_size must be at least 1.')
  paths = image_listing.given_images(config.images, config.image_dir)
  labels = None
  if is_saved_model(config.graph):
    model = _saved_model_classifier(config)
  else:
    data, graph_def, labels = read_model_and_labels(config)
    model = (_tflite_classifier(data, config) if graph_def is None else
             _graph_classifier(graph_def, config))
  with model as classifier:
    return _label(paths, classifier, labels, config)


def _labels(classifier, labels, config):
  """The label names (`labels` if already read) and where they came from,
  for errors."""
  if config.labels is None and classifier.labels is not None:
    return classifier.labels, f'The labels packed in {config.graph}'
  path = config.labels or settings.DEFAULT_LABELS
  return labels or labels_file.read(path), f'--labels {path}'


def _run(classifier, pixels, config):
  try:
    return classifier.scores(pixels)
  except tf.errors.OpError as e:
    raise PoetsError(
        f'--graph {config.graph} failed while labelling '
        f'({errors.first_line(e)}); check --output_layer '
        f"'{config.output_layer}' with --list_layers.") from e


def _scores(values, count, config):
  """The output as one row of numbers per image, or PoetsError saying what
  the output is instead."""
  values = np.asarray(values)
  problem = None
  if values.dtype.kind not in 'fiu':
    kind = 'text' if values.dtype.kind in 'OSU' else values.dtype.name
    problem = f'{kind} values, not scores'
  elif values.ndim == 0 or values.shape[0] != count or values.size == 0:
    problem = (f'values of shape {list(values.shape)} for a batch of {count} '
               'images, not one row of scores per image')
  if problem:
    raise PoetsError(f"--output_layer '{config.output_layer}' of "
                     f'{config.graph} gives {problem}; pick the classifier\'s '
                     'output (see --list_layers).')
  return np.reshape(values.astype(np.float64), [count, -1])


def _available_memory():
  """Bytes of memory free for use now (Linux's MemAvailable), or None."""
  try:
    with open('/proc/meminfo') as f:
      for line in f:
        if line.startswith('MemAvailable:'):
          return int(line.split()[1]) * 1024
  except (OSError, ValueError, IndexError):
    pass
  return None


# Decoded batches in memory at once: the one the graph runs on, those the
# pipeline prepares, and the graph's own activations, a few times its input.
_BATCHES_IN_MEMORY = 8


def fitting_batch_size(batch_size, height, width, warnings):
  """`batch_size`, or a smaller one whose images fit in the memory free
  now, with a line in `warnings` saying so."""
  memory = _available_memory()
  per_image = height * width * 3 * 4 * _BATCHES_IN_MEMORY
  if memory is None or batch_size * per_image <= memory:
    return batch_size
  fitting = max(1, memory // per_image)
  warnings.append(
      f'--batch_size {batch_size} would take about '
      f'{batch_size * per_image / 2**20:,.0f} MiB at {height}x{width}, more '
      f'than the {memory / 2**20:,.0f} MiB free; labelling {fitting} images '
      'at a time instead.')
  return fitting


def _label(paths, classifier, labels, config):
  labels, source = _labels(classifier, labels, config)
  if classifier.classes is not None:
    _check_labels(labels, source, classifier.classes, config)
  fixed_batch = classifier.fixed_batch
  warnings = []
  batch_size = fixed_batch or fitting_batch_size(
      config.batch_size, classifier.height, classifier.width, warnings)
  graph = tf.Graph()
  with graph.as_default():
    data = image_decoding.decode_in_batches(
        paths, lambda contents: image_decoding.decode_and_normalize(
            contents, classifier.height, classifier.width, config.input_mean,
            config.input_std), batch_size)
  results = [None] * len(paths)
  seconds = 0.0
  batches = 0
  with tf.compat.v1.Session(graph=graph) as data_session:
    for batch_indices, pixels in image_decoding.each_batch(
        data_session, [data.indices, data.images]):
      count = len(batch_indices)
      if fixed_batch and count < fixed_batch:
        pixels = np.concatenate([pixels, np.zeros(
            (fixed_batch - count,) + pixels.shape[1:], pixels.dtype)])
      start = time.perf_counter()
      values = _run(classifier, pixels, config)
      seconds += time.perf_counter() - start
      batches += 1
      scores = _scores(values, len(pixels), config)[:count]
      _check_labels(labels, source, scores.shape[1], config)
      for index, image_scores in zip(batch_indices, scores):
        results[index] = ImageResult(
            paths[index], _top(image_scores, labels, config.top_k))
    labelled = [index for index, result in enumerate(results) if result]
    for index, failure in data.failures(data_session, labelled):
      results[index] = ImageResult(paths[index], [],
                                   _read_error(paths[index], failure))
  return LabelRun(results, seconds, batches, classifier.warnings + warnings +
                  convention_warnings(config))
