"""The whole retraining run: images -> bottlenecks -> training -> export.

`retrain.py` at the top level parses flags into a RetrainConfig and calls
`run`; experiments.py calls it once per configuration. Nothing here reads
flags.
"""

import dataclasses
import datetime
import fcntl
import os
import time

from absl import logging
import tensorflow as tf

from poets import bottlenecks
from poets import export
from poets import files
from poets import images
from poets import modules
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


# Held by every run writing into a --summaries_dir; see _claim_summaries.
SUMMARIES_LOCK = '.retrain_running.lock'


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


def _output_files(config):
  """Each output file with its flag, finished and interrupted alike."""
  named = [(config.output_graph, '--output_graph'),
           (config.output_labels, '--output_labels')] + [
               (config.training.checkpoint_path + suffix, '--checkpoint_path')
               for suffix in ('', '.index', '.data-00000-of-00001')]
  return named + [(files.interrupted_path(path), flag)
                  for path, flag in named]


def _check_outputs(config):
  """Every output checked before any work, so a mistake costs seconds."""
  claimed = {}
  for path, flag in _output_files(config) + [(config.saved_model_dir,
                                              '--saved_model_dir')]:
    if not path:
      continue
    other = claimed.setdefault(os.path.realpath(path), flag)
    if other != flag:
      raise PoetsError(f'{flag} {path} is also the path of {other}; give '
                       'each output its own path.')
  for path, flag in _output_files(config):
    files.check_output_file(path, flag)
  folders = [(config.bottleneck_dir, '--bottleneck_dir'),
             (config.training.summaries_dir, '--summaries_dir'),
             (config.model_dir, '--model_dir')]
  if config.intermediate_store_frequency > 0:
    folders.append((config.intermediate_output_graphs_dir,
                    '--intermediate_output_graphs_dir'))
  for path, flag in folders:
    files.check_writable(path, flag)
  for path, flag in [(config.training.checkpoint_path, '--checkpoint_path'),
                     (config.training.summaries_dir, '--summaries_dir'),
                     (config.model_dir, '--model_dir'),
                     (config.saved_model_dir, '--saved_model_dir')]:
    files.check_tensorflow_path(path, flag)
  if config.saved_model_dir:
    for path in (config.saved_model_dir,
                 files.interrupted_path(config.saved_model_dir)):
      export.check_saved_model_dir(path)


def _claim_summaries(summaries_dir):
  """Sets an earlier run's event folders aside, unless a run is still
  writing them; returns the lock to hold until this run ends.

  Every run holds a shared lock on a file in --summaries_dir while it runs;
  setting aside needs the lock alone, so the folders of a run still going
  stay where they are, and the two runs' event files sit side by side, told
  apart by their process ids (training.event_writer).
  """
  os.makedirs(summaries_dir, exist_ok=True)
  lock = open(os.path.join(summaries_dir, SUMMARIES_LOCK), 'a')
  try:
    fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    _set_aside_earlier_run(summaries_dir)
  except BlockingIOError:
    logging.warning('Another run is writing to %s; its event files stay '
                    'there, beside this run\'s.', summaries_dir)
  fcntl.flock(lock, fcntl.LOCK_SH)
  return lock


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

  def freeze(layer):
    return export.frozen_graph_def(spec, len(labels),
                                   config.training.final_tensor_name, layer)

  def save_intermediate(step, layer):
    path = os.path.join(config.intermediate_output_graphs_dir,
                        f'intermediate_{step}.pb')
    logging.info('Save intermediate result to : %s', path)
    export.save_graph(freeze(layer), path)

  with _claim_summaries(config.training.summaries_dir):
    start = time.perf_counter()
    result = training.train(config.training, splits, labels, spec,
                            save_intermediate,
                            config.intermediate_store_frequency)
    training_seconds = time.perf_counter() - start

    start = time.perf_counter()
    graph_def = freeze(result.layer)
    export.write_graph_summary(graph_def, config.training.summaries_dir)
  outputs = [config.output_graph, config.output_labels, config.saved_model_dir]
  if result.interrupted:
    # Beside the finished outputs, never over them.
    outputs = [path and files.interrupted_path(path) for path in outputs]
  graph_path, labels_path, saved_model_dir = outputs
  export.save_graph(graph_def, graph_path)
  export.save_labels(labels, labels_path)
  saved = [graph_path, labels_path]
  if saved_model_dir:
    export.export_saved_model(graph_def, saved_model_dir,
                              config.training.final_tensor_name)
    saved.append(saved_model_dir)
  export_seconds = time.perf_counter() - start
  if result.interrupted:
    logging.warning('Stopped early at step %d: saved the checkpoint %s and '
                    'the layer trained so far to %s (beside the finished '
                    'outputs, which are left as they were; use these with '
                    'label_image.py --graph and --labels).',
                    result.steps_done,
                    files.interrupted_path(config.training.checkpoint_path),
                    ', '.join(saved))
  else:
    logging.info('Saved %s.', ', '.join(saved))
  return RunResult(labels, cache, result, bottleneck_seconds,
                   training_seconds, export_seconds)
