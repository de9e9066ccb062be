"""Labeling without TensorFlow: what label_image.py gives back and checks.

The result types, the checks of labels and image sizes against the model,
the top-k scores and the batch loop's steps, shared by poets.core.labeling
(frozen graphs, SavedModels) and poets.core.tflite_labeling (TensorFlow Lite
models, which label_image.py runs without loading TensorFlow).
"""

import dataclasses
import os
import time
from typing import Callable

import numpy as np

from poets import settings
from poets.core import graph_names
from poets.core import image_listing
from poets.core import labels_file
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



def check_labels(labels, source, classes, config):
  if len(labels) != classes:
    raise PoetsError(
        f'{source} has {len(labels)} labels but '
        f"--output_layer '{config.output_layer}' of {config.graph} gives "
        f'{classes} scores; pass the labels file written with this graph.')



def image_size(config, static_height, static_width, shape_text):
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
  prefix = f'{graph_names.IMPORT_PREFIX}/'
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



def read_error(path, failure):
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


def top(scores, labels, top_k):
  order = np.argsort(-scores, kind='stable')[:top_k]
  return [Prediction(labels[i], float(scores[i])) for i in order]



@dataclasses.dataclass
class Classifier:
  """What labeling needs of a model, whichever kind of file it came from."""
  height: int
  width: int
  fixed_batch: int | None  # None: any batch size.
  classes: int | None  # None: known only once it has run.
  scores: Callable[[np.ndarray], np.ndarray]  # [N,H,W,3] -> [N,classes]
  labels: list[str] | None = None  # Those the model carries, if any.
  warnings: list[str] = dataclasses.field(default_factory=list)



def labels_of(classifier, labels, config):
  """The label names (`labels` if already read) and where they came from,
  for errors."""
  if config.labels is None and classifier.labels is not None:
    return classifier.labels, f'The labels packed in {config.graph}'
  path = config.labels or settings.DEFAULT_LABELS
  return labels or labels_file.read(path), f'--labels {path}'



def scores_of(values, count, config):
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


def available_memory():
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
  memory = available_memory()
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


def given_images(config):
  """The images `config` names, once its numbers are checked."""
  settings.check_input_std(config.input_std)
  if config.top_k < 1 or config.batch_size < 1:
    raise PoetsError('--top_k and --batch_size must be at least 1.')
  return image_listing.given_images(config.images, config.image_dir)


def start(classifier, labels, config):
  """(labels, where they came from, batch size, warnings) for labelling
  with `classifier`; `labels` as read with the model, if they were."""
  labels, source = labels_of(classifier, labels, config)
  if classifier.classes is not None:
    check_labels(labels, source, classifier.classes, config)
  warnings = []
  batch_size = classifier.fixed_batch or fitting_batch_size(
      config.batch_size, classifier.height, classifier.width, warnings)
  return labels, source, batch_size, warnings


def label_batch(classifier, pixels, labels, source, config):
  """(the top predictions of each image in `pixels`, seconds in the model);
  a model of a fixed batch size gets the batch padded to it."""
  count = len(pixels)
  fixed_batch = classifier.fixed_batch
  if fixed_batch and count < fixed_batch:
    pixels = np.concatenate([pixels, np.zeros(
        (fixed_batch - count,) + pixels.shape[1:], pixels.dtype)])
  begin = time.perf_counter()
  values = classifier.scores(pixels)
  seconds = time.perf_counter() - begin
  scores = scores_of(values, len(pixels), config)[:count]
  check_labels(labels, source, scores.shape[1], config)
  return [top(image_scores, labels, config.top_k)
          for image_scores in scores], seconds
