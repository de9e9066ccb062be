"""The whole retraining run: images -> bottlenecks -> training -> export.

`retrain.py` at the top level parses flags into RetrainSettings and calls
`run`; experiments.py calls it once per configuration. Nothing here reads
flags.
"""

import dataclasses
import datetime
import os
import time

from absl import logging
import tensorflow as tf

from poets import bottlenecks
from poets import export
from poets import files
from poets import images
from poets import modules
from poets import tflite
from poets import training
from poets.errors import PoetsError


@dataclasses.dataclass
class RunResult:
  """What a run produced and how long its stages took, for reports."""
  labels: list
  cache: bottlenecks.CacheSummary
  split_sizes: dict  # images used per split: training, validation, testing
  training: training.TrainingResult
  listing_seconds: float  # finding the images and splitting them
  bottleneck_seconds: float  # cache.read_seconds of it reading the cache
  training_seconds: float
  export_seconds: float


def default_summaries_dir(module_name):
  return os.path.join('tf_files', 'training_summaries', module_name)


# Where an earlier run's event folders go, inside --summaries_dir. TensorBoard
# lists runs (and opens the Graphs tab on the first) in name order; "~" sorts
# after "train" and "validation" there, so the current run comes first.
EARLIER_RUNS = '~previous_runs'


def _set_aside_earlier_run(summaries_dir):
  """Moves an earlier run's event folders into a dated sub-folder.

  The original deleted --summaries_dir at every start. Moving keeps the old
  curves (TensorBoard shows them as their own runs, after the current one)
  out of the new ones.
  """
  earlier = [name for name in ('train', 'validation', 'retrained_graph')
             if os.path.isdir(os.path.join(summaries_dir, name))]
  if not earlier:
    return
  stamp = datetime.datetime.now().strftime('%Y%m%d-%H%M%S-%f')
  destination = os.path.join(summaries_dir, EARLIER_RUNS, stamp)
  os.makedirs(destination)
  for name in earlier:
    os.rename(os.path.join(summaries_dir, name),
              os.path.join(destination, name))
  logging.info('Moved the event files of an earlier run in %s to %s, so they '
               'stay out of this run\'s curves (nothing was deleted).',
               summaries_dir, destination)


def _check_tflite(settings):
  tflite.check_quantization(settings.tflite_quantization,
                            '--tflite_quantization')
  path = settings.output_tflite
  if not path:
    if settings.tflite_quantization != 'none':
      raise PoetsError(f'--tflite_quantization {settings.tflite_quantization}'
                       ' needs --output_tflite, the .tflite file to write; '
                       'for example --output_tflite '
                       'tf_files/optimized_graph.tflite.')
    return
  if os.path.isdir(path):
    raise PoetsError(f'--output_tflite {path} is a folder; pass a file name '
                     'such as tf_files/optimized_graph.tflite.')
  if os.path.abspath(path) == os.path.abspath(settings.output_graph):
    raise PoetsError(f'--output_tflite {path} is also --output_graph; pass '
                     'another name, such as tf_files/optimized_graph.tflite.')
  files.check_writable(os.path.dirname(path), '--output_tflite')


def _check_outputs(settings):
  _check_tflite(settings)
  for path, flag in [
      (os.path.dirname(settings.output_graph), '--output_graph'),
      (os.path.dirname(settings.output_labels), '--output_labels'),
      (settings.bottleneck_dir, '--bottleneck_dir'),
      (settings.summaries_dir, '--summaries_dir'),
      (os.path.dirname(settings.checkpoint_path), '--checkpoint_path'),
      (settings.model_dir, '--model_dir')]:
    files.check_writable(path, flag)


def _module_info(spec):
  """Loads the module once in a scratch graph to learn its sizes."""
  with tf.Graph().as_default():
    return modules.load_module(spec)


def _check_usable(splits, labels):
  trained = set(splits['training'].ground_truth.tolist())
  if len(trained) < 2:
    raise PoetsError(
        f'Fewer than 2 classes have usable training images (have: '
        f'{", ".join(labels[i] for i in sorted(trained)) or "none"}); add '
        'images that decode to at least two class folders.')


def run(settings):
  """Retrains and exports; returns a RunResult. Raises PoetsError."""
  # Images first: a mistyped --image_dir is reported before the embedded
  # module is built.
  start = time.perf_counter()
  image_lists = images.create_image_lists(settings.image_dir,
                                          settings.testing_percentage,
                                          settings.validation_percentage)
  if settings.images_per_class is not None:
    image_lists = images.limit_training_images(
        image_lists, settings.images_per_class, settings.random_seed)
  listing_seconds = time.perf_counter() - start
  spec = modules.resolve_module(settings.architecture, settings.tfhub_module,
                                settings.model_dir, settings.input_size)
  if not settings.summaries_dir:
    settings = settings.replace(summaries_dir=default_summaries_dir(spec.name))
  _check_outputs(settings)
  labels = image_lists.labels
  module = _module_info(spec)
  logging.info('Module %s: %dx%d images -> %d-value bottlenecks', spec.name,
               module.image_size[0], module.image_size[1],
               module.bottleneck_size)

  start = time.perf_counter()
  splits, cache = bottlenecks.cache_bottlenecks(image_lists, module,
                                                settings.bottleneck_dir)
  bottleneck_seconds = time.perf_counter() - start
  split_sizes = {name: len(split.ground_truth)
                 for name, split in splits.items()}
  logging.info('Using %d images (%d training, %d validation, %d testing); '
               'skipped %d that could not be decoded.',
               sum(split_sizes.values()), split_sizes['training'],
               split_sizes['validation'], split_sizes['testing'],
               len(cache.failed))
  _check_usable(splits, labels)

  def freeze():
    return export.frozen_graph_def(spec, len(labels),
                                   settings.final_tensor_name,
                                   settings.checkpoint_path)

  def save_intermediate(step):
    path = os.path.join(settings.intermediate_output_graphs_dir,
                        f'intermediate_{step}.pb')
    logging.info('Save intermediate result to : %s', path)
    export.save_graph(freeze(), path)

  _set_aside_earlier_run(settings.summaries_dir)
  start = time.perf_counter()
  result = training.train(settings, splits, labels, spec, save_intermediate)
  training_seconds = time.perf_counter() - start

  start = time.perf_counter()
  graph_def = freeze()
  export.save_graph(graph_def, settings.output_graph)
  export.save_labels(labels, settings.output_labels)
  export.write_graph_summary(graph_def, settings.summaries_dir, spec.name)
  saved = [settings.output_graph, settings.output_labels]
  if settings.saved_model_dir:
    export.export_saved_model(graph_def, settings.saved_model_dir,
                              settings.final_tensor_name)
    saved.append(settings.saved_model_dir)
  if settings.output_tflite:
    tflite.save_model(tflite.convert(
        graph_def, export.INPUT_NAME, settings.final_tensor_name,
        settings.tflite_quantization,
        tflite.calibration_images(splits['training'].filenames),
        what='the retrained graph'), settings.output_tflite)
    saved.append(settings.output_tflite)
  export_seconds = time.perf_counter() - start
  if result.interrupted:
    logging.warning('Stopped early at step %d: saved the checkpoint %s and '
                    'the layer trained so far to %s.', result.steps_done,
                    settings.checkpoint_path, ', '.join(saved))
  else:
    logging.info('Saved %s.', ', '.join(saved))
  return RunResult(labels, cache, split_sizes, result, listing_seconds,
                   bottleneck_seconds, training_seconds, export_seconds)
