"""The whole retraining run: images -> bottlenecks -> training -> export.

`retrain.py` at the top level parses flags into RetrainSettings and calls
`run`; experiments.py calls it once per configuration. Nothing here reads
flags.
"""

import dataclasses
import os
import time

from absl import logging
import tensorflow as tf

from poets import files
from poets import outputs
from poets import summaries
from poets.core import bottlenecks
from poets.core import cut_cache
from poets.core import export
from poets.core import fine_tuning
from poets.core import graph_names
from poets.core import image_listing
from poets.core import modules
from poets.core import tflite_metadata
from poets.core import training
from poets.errors import PoetsError
from poets.extras import dashboards
from poets.extras import saved_model
from poets.extras import tensorboard_graph
from poets.extras import tflite_converter


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


# The event folders of one run, training's, export's and the dashboards',
# with the files each may hold (summaries.claim marks them as this run's).
RUN_FOLDERS = {
    **{name: (summaries.EVENT_FILES,) for name in summaries.EVENT_FOLDERS},
    dashboards.TEST_RUN: (summaries.EVENT_FILES,),
    dashboards.PROJECTOR_RUN: (summaries.EVENT_FILES, '*.tsv', '*.bytes',
                               dashboards.PROJECTOR_CONFIG, dashboards.SPRITE),
}


def _check_tflite(settings):
  tflite_converter.check_quantization(settings.tflite_quantization,
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
           (settings.output_labels, '--output_labels'),
           (outputs.manifest_path(settings.output_labels),
            '--output_labels')] + [
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
              for name in RUN_FOLDERS] + [
                  (summaries.previous_runs_dir(settings.summaries_dir),
                   '--summaries_dir')]
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
      saved_model.check_saved_model_dir(path)


def _resolve_module(settings):
  return modules.resolve_module(
      settings.architecture, settings.tfhub_module, settings.model_dir,
      settings.input_size, files.DownloadLimits(
          settings.download_timeout, settings.download_max_mb * 2**20))


def _check_usable(splits, labels):
  trained = set(splits['training'].ground_truth.tolist())
  if len(trained) < 2:
    raise PoetsError(
        f'Fewer than 2 classes have usable training images (have: '
        f'{", ".join(labels[i] for i in sorted(trained)) or "none"}); add '
        'images that decode to at least two class folders.')


def train(settings, labels, spec, module, splits, cut=None, cut_splits=None,
          save_intermediate=None):
  """Trains the new layer on `splits`' bottlenecks; with a fine_tuning.Cut,
  then the top blocks with it on `cut_splits`' cuts. Returns the
  TrainingResult of the last."""
  result = training.train(settings, splits, labels, spec, save_intermediate,
                          final_test=cut is None)
  if cut is None or result.interrupted:
    return result
  logging.info('Fine-tuning the top %d blocks with the new layer for %d '
               'steps', settings.fine_tune_blocks, settings.fine_tune_steps)
  return training.train(
      settings, cut_splits, labels, spec, save_intermediate,
      fine_tuning.FineTuning(
          cut, fine_tuning.bottom_module(cut, module), result.layer,
          first_step=settings.how_many_training_steps,
          steps=settings.fine_tune_steps,
          learning_rate=settings.fine_tune_learning_rate))


def check_inputs(settings):
  """What `run` checks before any work, for callers that start runs
  elsewhere (experiments.py, before its first run): the image folder, the
  module, and the folders runs share. Raises PoetsError."""
  image_listing.create_image_lists(settings.image_dir,
                                   settings.testing_percentage,
                                   settings.validation_percentage)
  modules.module_info(
      _resolve_module(settings))
  files.check_writable(settings.bottleneck_dir, '--bottleneck_dir')
  files.check_writable(settings.model_dir, '--model_dir')


def log_image_lists(image_lists):
  """Says which folders became which labels, where they differ, and how many
  images of each class went to training, validation and testing."""
  for image_class in image_lists.classes:
    if image_class.dir != image_class.label:
      logging.info("Folder '%s' becomes the label '%s'.", image_class.dir,
                   image_class.label)
  splits = ('training', 'validation', 'testing')
  counts = [[len(c.split(name)) for name in splits]
            for c in image_lists.classes]
  counts.append([sum(column) for column in zip(*counts)])
  names = image_lists.labels + ['total']
  width = max(len(name) for name in names + ['class'])
  rows = [f'{"class":<{width}}  training  validation  testing']
  rows += [f'{name:<{width}}  {training:8d}  {validation:10d}  {testing:7d}'
           for name, (training, validation, testing) in zip(names, counts)]
  logging.info('Images per class:\n%s', '\n'.join(rows))


def _image_lists(settings, images_per_class):
  """The split of --image_dir, its training images cut to `images_per_class`
  per class if set."""
  image_lists = image_listing.create_image_lists(
      settings.image_dir, settings.testing_percentage,
      settings.validation_percentage)
  if images_per_class is not None:
    image_lists = image_listing.limit_training_images(
        image_lists, images_per_class, settings.random_seed)
  return image_lists


def _cached_features(settings, image_lists, spec, module, cut):
  """(splits, cache summary, cut splits): the bottlenecks of every split,
  or with a `cut` (--fine_tune_blocks) the cut of each photo and the
  pretrained bottlenecks made from it."""
  cut_splits = None
  if cut:
    logging.info('Fine-tuning the top %d blocks of %s: caching the %s input '
                 'of block %d per image', settings.fine_tune_blocks,
                 spec.name, 'x'.join(map(str, cut.shape)), cut.block)
    cut_splits, cache = cut_cache.cache_cuts(image_lists, module, cut,
                                             settings.bottleneck_dir)
    splits = fine_tuning.pretrained_bottlenecks(cut, cut_splits)
  else:
    splits, cache = bottlenecks.cache_bottlenecks(image_lists, module,
                                                  settings.bottleneck_dir)
  return splits, cache, cut_splits


def _save_outputs(settings, graph_def, labels, training_paths, interrupted):
  """The graph, labels, SavedModel and .tflite as one set (poets.outputs);
  an interrupted run's beside the finished ones. Returns their paths."""
  run_set = outputs.RunSet(settings.output_graph, settings.output_labels,
                           settings.saved_model_dir, settings.output_tflite)
  if interrupted:
    # Beside the finished outputs, never over them.
    run_set = outputs.RunSet(*[path and files.interrupted_path(path)
                               for path in dataclasses.astuple(run_set)])
  return outputs.save(
      run_set, graph_def, labels,
      lambda graph_def, folder: saved_model.build_saved_model(
          graph_def, folder, settings.final_tensor_name),
      lambda graph_def: tflite_metadata.add_metadata(tflite_converter.convert(
          graph_def, graph_names.INPUT_NAME, settings.final_tensor_name,
          settings.tflite_quantization,
          tflite_converter.calibration_images(training_paths),
          what='the retrained graph'), labels))


def _write_dashboards(settings, module, splits, labels, result, cut,
                      cut_splits):
  with files.only_a_warning('write the dashboards',
                            (OSError, tf.errors.OpError)):
    dashboards.write_run(settings.summaries_dir, settings, module, splits,
                         labels, result, cut, cut_splits)


def _train_and_export(settings, spec, module, labels, splits, cut,
                      cut_splits):
  """Trains, then freezes the graph and saves the outputs; returns the
  TrainingResult, the paths saved and the seconds of each part."""
  frozen = export.FrozenGraphs(spec, len(labels), settings.final_tensor_name,
                               cut)
  with summaries.claim(settings.summaries_dir, RUN_FOLDERS), frozen:

    def freeze(layer):
      # The module's function opened up: TensorFlow's optimize_for_inference
      # drops a graph's functions, and the codelab ran it on this graph.
      return tensorboard_graph.inline_functions(frozen.freeze(layer),
                                                spec.name)

    def save_intermediate(step, layer):
      path = os.path.join(settings.intermediate_output_graphs_dir,
                          f'intermediate_{step}.pb')
      logging.info('Save intermediate result to : %s', path)
      export.save_graph(freeze(layer), path)

    start = time.perf_counter()
    result = train(settings, labels, spec, module, splits, cut, cut_splits,
                   save_intermediate)
    training_seconds = time.perf_counter() - start

    start = time.perf_counter()
    graph_def = freeze(result.layer)
    saved = _save_outputs(settings, graph_def, labels,
                          splits['training'].filenames, result.interrupted)
    # After the outputs, and its writer only warns: a summary that cannot
    # be written loses no layer.
    tensorboard_graph.write_graph_summary(graph_def, settings.summaries_dir,
                                          spec.name)
  return (result, saved, training_seconds,
          time.perf_counter() - start)


def run(settings, images_per_class=None):
  """Retrains and exports; returns a RunResult. Raises PoetsError.

  `images_per_class` (not a retrain.py flag: experiments.py's learning
  curves) keeps at most that many training images of each class.
  """
  cut = None
  if settings.fine_tune_blocks:  # Refused before any work if it cannot be.
    cut = fine_tuning.find_cut(settings.architecture, settings.tfhub_module,
                               settings.fine_tune_blocks)
  # Images first: a mistyped --image_dir is reported before the embedded
  # module is built.
  start = time.perf_counter()
  image_lists = _image_lists(settings, images_per_class)
  listing_seconds = time.perf_counter() - start
  log_image_lists(image_lists)
  spec = _resolve_module(settings)
  if not settings.summaries_dir:
    settings = settings.replace(summaries_dir=summaries.default_dir(spec.name))
  _check_outputs(settings)
  summaries.check(settings.summaries_dir, settings.image_dir, RUN_FOLDERS)
  labels = image_lists.labels
  module = modules.module_info(spec)
  logging.info('Module %s: %dx%d images -> %d-value bottlenecks', spec.name,
               module.image_size[0], module.image_size[1],
               module.bottleneck_size)

  start = time.perf_counter()
  splits, cache, cut_splits = _cached_features(settings, image_lists, spec,
                                               module, cut)
  bottleneck_seconds = time.perf_counter() - start
  split_sizes = {name: len(split.ground_truth)
                 for name, split in splits.items()}
  logging.info('Using %d images (%d training, %d validation, %d testing); '
               'skipped %d that could not be decoded.',
               sum(split_sizes.values()), split_sizes['training'],
               split_sizes['validation'], split_sizes['testing'],
               len(cache.failed))
  _check_usable(splits, labels)

  result, saved, training_seconds, export_seconds = _train_and_export(
      settings, spec, module, labels, splits, cut, cut_splits)
  _write_dashboards(settings, module, splits, labels, result, cut,
                    cut_splits)
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
