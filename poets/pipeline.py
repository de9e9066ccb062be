"""The whole retraining run: images -> bottlenecks -> training -> export.

`retrain.py` at the top level parses flags into a RetrainConfig and calls
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
from poets.training import TrainingConfig
from poets.errors import PoetsError


@dataclasses.dataclass
class RetrainConfig:
  """Everything a run needs; defaults are the codelab's."""
  image_dir: str = images.DEFAULT_IMAGE_DIR
  output_graph: str = 'tf_files/retrained_graph.pb'
  output_labels: str = 'tf_files/retrained_labels.txt'
  bottleneck_dir: str = 'tf_files/bottlenecks'
  intermediate_output_graphs_dir: str = 'tf_files/intermediate_graph'
  intermediate_store_frequency: int = 0
  saved_model_dir: str = ''
  output_tflite: str = ''  # also write a TensorFlow Lite model here
  tflite_quantization: str = 'none'  # one of tflite.QUANTIZATIONS
  testing_percentage: float = 10
  validation_percentage: float = 10
  architecture: str = ''
  tfhub_module: str = ''
  model_dir: str = 'tf_files/models'
  input_size: tuple[int, int] | None = None
  images_per_class: int | None = None  # training images kept per class
  training: TrainingConfig = dataclasses.field(default_factory=TrainingConfig)


@dataclasses.dataclass
class RunResult:
  """What a run produced and how long its stages took, for reports."""
  labels: list
  cache: bottlenecks.CacheSummary
  training: training.TrainingResult
  bottleneck_seconds: float
  training_seconds: float
  export_seconds: float


def default_summaries_dir(module_name):
  return os.path.join('tf_files', 'training_summaries', module_name)


def _set_aside_earlier_run(summaries_dir):
  """Moves an earlier run's event folders into a dated sub-folder.

  The original deleted --summaries_dir at every start. Moving keeps the old
  curves (TensorBoard shows them as their own runs) out of the new ones.
  """
  earlier = [name for name in ('train', 'validation', 'retrained_graph')
             if os.path.isdir(os.path.join(summaries_dir, name))]
  if not earlier:
    return
  stamp = datetime.datetime.now().strftime('%Y%m%d-%H%M%S-%f')
  destination = os.path.join(summaries_dir, 'previous_runs', stamp)
  os.makedirs(destination)
  for name in earlier:
    os.rename(os.path.join(summaries_dir, name),
              os.path.join(destination, name))
  logging.info('Moved the event files of an earlier run in %s to %s, so they '
               'stay out of this run\'s curves (nothing was deleted).',
               summaries_dir, destination)


def _check_tflite(config):
  tflite.check_quantization(config.tflite_quantization,
                            '--tflite_quantization')
  path = config.output_tflite
  if not path:
    if config.tflite_quantization != 'none':
      raise PoetsError(f'--tflite_quantization {config.tflite_quantization} '
                       'needs --output_tflite, the .tflite file to write; '
                       'for example --output_tflite '
                       'tf_files/optimized_graph.tflite.')
    return
  if os.path.isdir(path):
    raise PoetsError(f'--output_tflite {path} is a folder; pass a file name '
                     'such as tf_files/optimized_graph.tflite.')
  if os.path.abspath(path) == os.path.abspath(config.output_graph):
    raise PoetsError(f'--output_tflite {path} is also --output_graph; pass '
                     'another name, such as tf_files/optimized_graph.tflite.')
  files.check_writable(os.path.dirname(path), '--output_tflite')


def _check_outputs(config):
  _check_tflite(config)
  for path, flag in [
      (os.path.dirname(config.output_graph), '--output_graph'),
      (os.path.dirname(config.output_labels), '--output_labels'),
      (config.bottleneck_dir, '--bottleneck_dir'),
      (config.training.summaries_dir, '--summaries_dir'),
      (os.path.dirname(config.training.checkpoint_path), '--checkpoint_path'),
      (config.model_dir, '--model_dir')]:
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


def run(config):
  """Retrains and exports; returns a RunResult. Raises PoetsError."""
  spec = modules.resolve_module(config.architecture, config.tfhub_module,
                                config.model_dir, config.input_size)
  if not config.training.summaries_dir:
    config = dataclasses.replace(config, training=dataclasses.replace(
        config.training, summaries_dir=default_summaries_dir(spec.name)))
  _check_outputs(config)
  image_lists = images.create_image_lists(config.image_dir,
                                          config.testing_percentage,
                                          config.validation_percentage)
  if config.images_per_class is not None:
    image_lists = images.limit_training_images(
        image_lists, config.images_per_class, config.training.random_seed)
  labels = image_lists.labels
  module = _module_info(spec)
  logging.info('Module %s: %dx%d images -> %d-value bottlenecks', spec.name,
               module.image_size[0], module.image_size[1],
               module.bottleneck_size)

  start = time.perf_counter()
  splits, cache = bottlenecks.cache_bottlenecks(image_lists, module,
                                                config.bottleneck_dir)
  bottleneck_seconds = time.perf_counter() - start
  used = sum(len(s.ground_truth) for s in splits.values())
  logging.info('Using %d images (%d training, %d validation, %d testing); '
               'skipped %d that could not be decoded.', used,
               len(splits['training'].ground_truth),
               len(splits['validation'].ground_truth),
               len(splits['testing'].ground_truth), len(cache.failed))
  _check_usable(splits, labels)

  def freeze():
    return export.frozen_graph_def(spec, len(labels),
                                   config.training.final_tensor_name,
                                   config.training.checkpoint_path)

  def save_intermediate(step):
    path = os.path.join(config.intermediate_output_graphs_dir,
                        f'intermediate_{step}.pb')
    logging.info('Save intermediate result to : %s', path)
    export.save_graph(freeze(), path)

  _set_aside_earlier_run(config.training.summaries_dir)
  start = time.perf_counter()
  result = training.train(config.training, splits, labels, spec,
                          save_intermediate,
                          config.intermediate_store_frequency)
  training_seconds = time.perf_counter() - start

  start = time.perf_counter()
  graph_def = freeze()
  export.save_graph(graph_def, config.output_graph)
  export.save_labels(labels, config.output_labels)
  export.write_graph_summary(graph_def, config.training.summaries_dir)
  saved = [config.output_graph, config.output_labels]
  if config.saved_model_dir:
    export.export_saved_model(graph_def, config.saved_model_dir,
                              config.training.final_tensor_name)
    saved.append(config.saved_model_dir)
  if config.output_tflite:
    tflite.save_model(tflite.convert(
        graph_def, export.INPUT_NAME, config.training.final_tensor_name,
        config.tflite_quantization,
        tflite.calibration_images(splits['training'].filenames),
        what='the retrained graph'), config.output_tflite)
    saved.append(config.output_tflite)
  export_seconds = time.perf_counter() - start
  if result.interrupted:
    logging.warning('Stopped early at step %d: saved the checkpoint %s and '
                    'the layer trained so far to %s.', result.steps_done,
                    config.training.checkpoint_path, ', '.join(saved))
  else:
    logging.info('Saved %s.', ', '.join(saved))
  return RunResult(labels, cache, result, bottleneck_seconds,
                   training_seconds, export_seconds)
