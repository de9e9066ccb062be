"""Labeling with a TensorFlow Lite model, without loading TensorFlow.

label_image.py on a .tflite: LiteRT (poets.core.tflite_interpreter) runs the
model and poets.core.photo_decoding decodes the photos to TensorFlow's
pixels, so a process that labels a photo never imports
TensorFlow and starts in a fraction of the time. The flags, checks, labels
(a labels file, else those packed in the model) and results are labeling's
(poets.core.label_results).
"""

from concurrent import futures
import os

import numpy as np

from poets.core import label_results
from poets.core import labels_file
from poets.core import model_files
from poets.core import photo_decoding
from poets.core import tflite_interpreter
from poets.core import tflite_metadata


def list_layers(path):
  """The --list_layers answer for the .tflite file at `path`."""
  return tflite_interpreter.describe_layers(tflite_interpreter.load_interpreter(
      model_files.read_model_file(path), path))


def _classifier(data, config):
  model = tflite_interpreter.load(data, config.graph, config.input_layer,
                                  config.output_layer)
  height, width = label_results.image_size(
      config, *tflite_interpreter.image_size(model),
      tflite_interpreter.shape_text(model.input))
  return label_results.Classifier(
      height, width, tflite_interpreter.fixed_batch(model),
      int(model.output['shape'][-1]),
      lambda pixels: tflite_interpreter.run(model, pixels),
      tflite_metadata.read_labels(data))


def _decoded_batches(paths, decode, batch_size, failed):
  """(positions in `paths`, pixels [n,H,W,3]) batches of the images that
  decode, in order, decoded on every core; `failed(position, Failure)` for
  each that does not."""
  pending = []
  with futures.ThreadPoolExecutor(os.cpu_count()) as pool:
    for begin in range(0, len(paths), batch_size):
      chunk = paths[begin:begin + batch_size]
      for position, (pixels, failure) in enumerate(pool.map(decode, chunk),
                                                   begin):
        if failure:
          failed(position, failure)
        else:
          pending.append((position, pixels))
        if len(pending) == batch_size:
          yield [p for p, _ in pending], np.stack([x for _, x in pending])
          pending = []
  if pending:
    yield [p for p, _ in pending], np.stack([x for _, x in pending])


def label_images(config):
  """labeling.label_images for a .tflite `config.graph`: a LabelRun, or
  PoetsError for a problem with the model, labels or flags."""
  paths = label_results.given_images(config)
  data = model_files.read_model_file(config.graph)
  labels = None if config.labels is None else labels_file.read(config.labels)
  classifier = _classifier(data, config)
  labels, source, batch_size, warnings = label_results.start(
      classifier, labels, config)
  results = [None] * len(paths)

  def failed(position, failure):
    results[position] = label_results.ImageResult(
        paths[position], [],
        label_results.read_error(paths[position], failure))

  def decode(path):
    return photo_decoding.decode_file(path, classifier.height,
                                      classifier.width, config.input_mean,
                                      config.input_std)

  seconds = 0.0
  batches = 0
  for positions, pixels in _decoded_batches(paths, decode, batch_size,
                                            failed):
    predictions, spent = label_results.label_batch(classifier, pixels,
                                                   labels, source, config)
    seconds += spent
    batches += 1
    for position, top in zip(positions, predictions):
      results[position] = label_results.ImageResult(paths[position], top)
  return label_results.LabelRun(
      results, seconds, batches, classifier.warnings + warnings +
      label_results.convention_warnings(config))
