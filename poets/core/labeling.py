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
same flags; poets.core.tflite_labeling labels with it without TensorFlow.
The results and the checks on them are poets.core.label_results'.
"""

import contextlib
import hashlib
import os
import time

import tensorflow as tf

from poets import errors
from poets import outputs
from poets import settings
from poets.core import frozen_graphs
from poets.core import image_decoding
from poets.core import label_results
from poets.core import labels_file
from poets.core import model_files
from poets.core import tflite_labeling
from poets.errors import PoetsError


def list_layers(graph_path):
  """The --list_layers answer for the graph or .tflite file at
  `graph_path`."""
  if model_files.is_tflite_file(graph_path):
    return tflite_labeling.list_layers(graph_path)
  return frozen_graphs.describe_layers(frozen_graphs.import_graph(
      frozen_graphs.load_graph_def(graph_path), graph_path))


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


def read_graph_and_labels(config):
  """(the GraphDef, its labels), read one right after the other and checked
  to belong together; read again once if not, in case a run was replacing
  them."""
  for attempt in range(2):
    graph_def = frozen_graphs.load_graph_def(config.graph)
    path = config.labels or settings.DEFAULT_LABELS
    labels_data = labels_file.read_bytes(path)
    problem = _mismatch(graph_def, labels_data, path, config)
    if problem is None:
      return graph_def, labels_file.decode(labels_data)
    if attempt == 0:
      time.sleep(0.5)
  raise PoetsError(problem)


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
  return label_results.image_size(config, static[1], static[2], shape_text)


def _session_classifier(session, input_tensor, output_tensor, config):
  height, width = _input_size(input_tensor, config)
  known = output_tensor.shape.rank and output_tensor.shape[-1] is not None

  def scores(pixels):
    try:
      return session.run(output_tensor, {input_tensor: pixels})
    except tf.errors.OpError as e:
      raise PoetsError(
          f'--graph {config.graph} failed while labelling '
          f'({errors.first_line(e)}); check --output_layer '
          f"'{config.output_layer}' with --list_layers.") from e

  return label_results.Classifier(
      height, width,
      # A graph exported for one image at a time (the codelab's Mul is
      # [1,299,299,3]) gets batches of exactly its size, padded at the end.
      input_tensor.shape[0] if input_tensor.shape.rank else None,
      output_tensor.shape[-1] if known else None,
      scores)


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


def label_images(config):
  """Labels every image of `config` with a frozen graph, a TensorFlow Lite
  model (told apart by content) or a SavedModel folder; returns a LabelRun.
  Raises PoetsError for a problem with the model, labels or flags; a bad
  image only gets an error in its ImageResult."""
  if not is_saved_model(config.graph) and model_files.is_tflite_file(
      config.graph):
    return tflite_labeling.label_images(config)
  paths = label_results.given_images(config)
  labels = None
  if is_saved_model(config.graph):
    model = _saved_model_classifier(config)
  else:
    graph_def, labels = read_graph_and_labels(config)
    model = _graph_classifier(graph_def, config)
  with model as classifier:
    return _label(paths, classifier, labels, config)


def _label(paths, classifier, labels, config):
  labels, source, batch_size, warnings = label_results.start(
      classifier, labels, config)
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
      predictions, spent = label_results.label_batch(
          classifier, pixels, labels, source, config)
      seconds += spent
      batches += 1
      for index, top in zip(batch_indices, predictions):
        results[index] = label_results.ImageResult(paths[index], top)
    labelled = [index for index, result in enumerate(results) if result]
    for index, failure in data.failures(data_session, labelled):
      results[index] = label_results.ImageResult(
          paths[index], [], label_results.read_error(paths[index], failure))
  return label_results.LabelRun(
      results, seconds, batches,
      classifier.warnings + warnings +
      label_results.convention_warnings(config))
