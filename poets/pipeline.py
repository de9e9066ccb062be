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

from poets import bottlenecks
from poets import export
from poets import files
from poets import images
from poets import modules
from poets import tflite
from poets import training
from poets.errors import PoetsError
from poets.extras import dashboards
from poets.extras import tflite_metadata

try:
  import fcntl
except ImportError:  # Windows: no flock, so no lock; see _claim_summaries.
  fcntl = None


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


# Held by every run writing into a --summaries_dir; see _claim_summaries.
SUMMARIES_LOCK = '.retrain_running.lock'


def default_summaries_dir(module_name):
  return os.path.join('tf_files', 'training_summaries', module_name)


# The event folders of one run, training's, export's and the dashboards'.
RUN_FOLDERS = ('train', 'validation', 'retrained_graph') + (
    dashboards.RUN_FOLDERS)
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
  earlier = [name for name in RUN_FOLDERS
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


def _output_files(settings):
  """Each output file with its flag, finished and interrupted alike."""
  named = [(settings.output_graph, '--output_graph'),
           (settings.output_labels, '--output_labels')] + [
               (settings.checkpoint_path + suffix, '--checkpoint_path')
               for suffix in ('', '.index', '.data-00000-of-00001')]
  if settings.output_tflite:
    named.append((settings.output_tflite, '--output_tflite'))
  return named + [(files.interrupted_path(path), flag)
                  for path, flag in named]


def _check_outputs(settings):
  """Every output checked before any work, so a mistake costs seconds."""
  _check_tflite(settings)
  claimed = {}
  for path, flag in _output_files(settings) + [(settings.saved_model_dir,
                                                '--saved_model_dir')]:
    if not path:
      continue
    other = claimed.setdefault(os.path.realpath(path), flag)
    if other != flag:
      raise PoetsError(f'{flag} {path} is also the path of {other}; give '
                       'each output its own path.')
  for path, flag in _output_files(settings):
    files.check_output_file(path, flag)
  folders = [(settings.bottleneck_dir, '--bottleneck_dir'),
             (settings.summaries_dir, '--summaries_dir'),
             (settings.model_dir, '--model_dir')]
  if settings.intermediate_store_frequency > 0:
    folders.append((settings.intermediate_output_graphs_dir,
                    '--intermediate_output_graphs_dir'))
  folders += [(os.path.join(settings.summaries_dir, name), '--summaries_dir')
              for name in RUN_FOLDERS + (EARLIER_RUNS,)]
  for path, flag in folders:
    files.check_writable(path, flag)
  for path, flag in [(settings.checkpoint_path, '--checkpoint_path'),
                     (settings.summaries_dir, '--summaries_dir'),
                     (settings.model_dir, '--model_dir'),
                     (settings.saved_model_dir, '--saved_model_dir')]:
    files.check_tensorflow_path(path, flag)
  if settings.saved_model_dir:
    for path in (settings.saved_model_dir,
                 files.interrupted_path(settings.saved_model_dir)):
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
  if fcntl is None:
    _set_aside_earlier_run(summaries_dir)
    return lock
  try:
    fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    _set_aside_earlier_run(summaries_dir)
  except BlockingIOError:
    logging.warning('Another run is writing to %s; its event files stay '
                    'there, beside this run\'s.', summaries_dir)
  fcntl.flock(lock, fcntl.LOCK_SH)
  return lock


def _check_usable(splits, labels):
  trained = set(splits['training'].ground_truth.tolist())
  if len(trained) < 2:
    raise PoetsError(
        f'Fewer than 2 classes have usable training images (have: '
        f'{", ".join(labels[i] for i in sorted(trained)) or "none"}); add '
        'images that decode to at least two class folders.')


def check_inputs(settings):
  """What `run` checks before any work, for callers that start runs
  elsewhere (experiments.py, before its first run): the image folder, the
  module, and the folders runs share. Raises PoetsError."""
  images.create_image_lists(settings.image_dir, settings.testing_percentage,
                            settings.validation_percentage)
  modules.module_info(modules.resolve_module(
      settings.architecture, settings.tfhub_module, settings.model_dir,
      settings.input_size))
  files.check_writable(settings.bottleneck_dir, '--bottleneck_dir')
  files.check_writable(settings.model_dir, '--model_dir')


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
  module = modules.module_info(spec)
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

  with _claim_summaries(settings.summaries_dir), export.FrozenGraphs(
      spec, len(labels), settings.final_tensor_name) as frozen_graphs:

    def freeze(layer):
      # The module's function opened up: TensorFlow's optimize_for_inference
      # drops a graph's functions, and the codelab ran it on this graph.
      return export.inline_functions(frozen_graphs.freeze(layer), spec.name)

    def save_intermediate(step, layer):
      path = os.path.join(settings.intermediate_output_graphs_dir,
                          f'intermediate_{step}.pb')
      logging.info('Save intermediate result to : %s', path)
      export.save_graph(freeze(layer), path)

    start = time.perf_counter()
    result = training.train(settings, splits, labels, spec,
                            save_intermediate)
    training_seconds = time.perf_counter() - start

    start = time.perf_counter()
    graph_def = freeze(result.layer)
    export.write_graph_summary(graph_def, settings.summaries_dir, spec.name)
  outputs = [settings.output_graph, settings.output_labels,
             settings.saved_model_dir, settings.output_tflite]
  if result.interrupted:
    # Beside the finished outputs, never over them.
    outputs = [path and files.interrupted_path(path) for path in outputs]
  graph_path, labels_path, saved_model_dir, tflite_path = outputs
  export.save_graph(graph_def, graph_path)
  export.save_labels(labels, labels_path)
  saved = [graph_path, labels_path]
  if saved_model_dir:
    export.export_saved_model(graph_def, saved_model_dir,
                              settings.final_tensor_name)
    saved.append(saved_model_dir)
  if tflite_path:
    tflite.save_model(tflite_metadata.add_metadata(tflite.convert(
        graph_def, export.INPUT_NAME, settings.final_tensor_name,
        settings.tflite_quantization,
        tflite.calibration_images(splits['training'].filenames),
        what='the retrained graph'), labels), tflite_path)
    saved.append(tflite_path)
  export_seconds = time.perf_counter() - start
  dashboards.write_run(settings.summaries_dir, settings, module, splits,
                       labels, result)
  if result.interrupted:
    logging.warning('Stopped early at step %d: saved the checkpoint %s and '
                    'the layer trained so far to %s (beside the finished '
                    'outputs, which are left as they were; use these with '
                    'label_image.py --graph and --labels).',
                    result.steps_done,
                    files.interrupted_path(settings.checkpoint_path),
                    ', '.join(saved))
  else:
    logging.info('Saved %s.', ', '.join(saved))
  return RunResult(labels, cache, split_sizes, result, listing_seconds,
                   bottleneck_seconds, training_seconds, export_seconds)
