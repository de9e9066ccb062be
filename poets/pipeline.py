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

from poets import bottlenecks
from poets import export
from poets import files
from poets import images
from poets import modules
from poets import outputs
from poets import summaries
from poets import tflite
from poets import training
from poets.errors import PoetsError
from poets.extras import dashboards
from poets.extras import tflite_metadata


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
      export.check_saved_model_dir(path)


def _write_graph_summary(graph_def, summaries_dir, module_name):
  try:
    export.write_graph_summary(graph_def, summaries_dir, module_name)
  except (OSError, tf.errors.OpError) as e:
    logging.warning('Could not write the graph for TensorBoard to %s (%s); '
                    'the outputs are saved.', summaries_dir,
                    getattr(e, 'strerror', None) or e.message)


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
  log_image_lists(image_lists)
  spec = modules.resolve_module(settings.architecture, settings.tfhub_module,
                                settings.model_dir, settings.input_size)
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

  with summaries.claim(settings.summaries_dir, RUN_FOLDERS), export.FrozenGraphs(
      spec, len(labels), settings.final_tensor_name) as frozen_graphs:

    def save_intermediate(step, layer):
      path = os.path.join(settings.intermediate_output_graphs_dir,
                          f'intermediate_{step}.pb')
      logging.info('Save intermediate result to : %s', path)
      export.save_graph(frozen_graphs.freeze(layer), path)

    start = time.perf_counter()
    result = training.train(settings, splits, labels, spec,
                            save_intermediate)
    training_seconds = time.perf_counter() - start

    start = time.perf_counter()
    graph_def = frozen_graphs.freeze(result.layer)
    run_set = outputs.RunSet(settings.output_graph, settings.output_labels,
                             settings.saved_model_dir, settings.output_tflite)
    if result.interrupted:
      # Beside the finished outputs, never over them.
      run_set = outputs.RunSet(*[path and files.interrupted_path(path)
                                 for path in dataclasses.astuple(run_set)])
    saved = outputs.save(
        run_set, graph_def, labels,
        lambda graph_def, folder: export.build_saved_model(
            graph_def, folder, settings.final_tensor_name),
        lambda graph_def: tflite_metadata.add_metadata(tflite.convert(
            graph_def, export.INPUT_NAME, settings.final_tensor_name,
            settings.tflite_quantization,
            tflite.calibration_images(splits['training'].filenames),
            what='the retrained graph'), labels))
    # After the outputs: a summary that cannot be written loses no layer.
    _write_graph_summary(graph_def, settings.summaries_dir, spec.name)
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
