"""Bottlenecks on Apache Beam: retrain.py's cache, made by many workers.

For folders too big for one machine. The pipeline makes exactly the cache
retrain.py would: the same files (`<bottleneck_dir>/<class folder>/<image
name>_<module name>.txt`, the original's comma-separated text, written to a
temporary name and renamed), from the same pixels through the same module.
Sound cache files are kept, so a rerun after a failure resumes; damaged ones
are made again; images that cannot be decoded are skipped and reported. Then
retrain.py on the same folders finds every bottleneck cached and trains.

  images --------> class folders -> images (listed by the workers, per class)
  cache check ---> sound files counted and left alone; missing or bad ones go on
  decode --------> the module's own decoding; failures to the skipped report
  RunInference --> Beam's TensorFlow model handler, batches of BATCH_SIZE
  write ---------> the cache file, atomically

Any Beam runner runs it; the workers must see --image_dir and
--bottleneck_dir at the same paths (one machine, or a shared filesystem) and
import this project. Apache Beam is optional: requirements-beam.txt.
"""

import dataclasses
import json
import os

from absl import logging
import apache_beam as beam
from apache_beam.ml.inference import base as inference
from apache_beam.ml.inference import tensorflow_inference
from apache_beam.metrics import Metrics
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.options.pipeline_options import PipelineOptions
import tensorflow as tf

from poets import files
from poets.core import bottlenecks
from poets.core import graph_names
from poets.core import image_decoding
from poets.core import image_listing
from poets.core import modules
from poets.errors import PoetsError

NAMESPACE = 'poets'


def skipped_report_path(bottleneck_dir, module_name):
  """Where a run lists the images it skipped: JSON lines [path, reason]."""
  return os.path.join(bottleneck_dir, f'skipped_images_{module_name}.jsonl')


def pipeline_options(beam_args):
  """Beam's options from the flags absl did not take, with our defaults.

  Beam drops flags it does not know with a warning; a mistyped option should
  stop the run instead, as a mistyped retrain.py flag does.
  """
  options = PipelineOptions(beam_args)
  unknown = sorted(set(options.get_all_options(retain_unknown_options=True))
                   - set(options.get_all_options()))
  if unknown:
    raise PoetsError(f'unknown flag(s) --{", --".join(unknown)}; see '
                     'beam_bottlenecks.py --help and Beam\'s pipeline options.')

  def given(name):
    return any(arg == f'--{name}' or arg.startswith(f'--{name}=')
               for arg in beam_args)

  defaults = {}
  if not given('runner'):
    defaults['runner'] = 'DirectRunner'
  if not given('direct_running_mode'):
    defaults['direct_running_mode'] = 'multi_processing'
  if not given('direct_num_workers'):
    defaults['direct_num_workers'] = 0  # One per core.
  return PipelineOptions(beam_args, **defaults)


@dataclasses.dataclass(frozen=True)
class _Image:
  """One image and the cache file its bottleneck goes to."""
  image_path: str
  cache_path: str


@dataclasses.dataclass(frozen=True)
class _Checked:
  """An image after the cache check: `problem` is None for a sound file."""
  image: _Image
  exists: bool
  problem: str | None
  other_size: int | None  # set when the file holds another count of values


def _list_class(class_dir, image_dir, bottleneck_dir, module_name):
  # Each class on its own worker: links are taken once within a class.
  image_names, _ = image_listing.find_images(os.path.join(image_dir, class_dir))
  for image_name in image_names:
    yield _Image(os.path.join(image_dir, class_dir, image_name),
                 bottlenecks.bottleneck_path(bottleneck_dir, class_dir,
                                             image_name, module_name))


def _check_cache(image, bottleneck_size):
  if not os.path.exists(image.cache_path):
    return _Checked(image, False, 'missing', None)
  values, problem = bottlenecks.read_bottleneck(image.cache_path)
  if values is not None and values.size != bottleneck_size:
    return _Checked(image, True, f'{values.size} values, expected '
                    f'{bottleneck_size}', values.size)
  return _Checked(image, True, problem, None)


def _tally(checked):
  return int(checked.problem is None), int(checked.other_size is not None)


def _count(counts):
  """(sound files, files of another size), summed; retrain.py's rule on them:
  if every cached file has another size, the cache is another module's."""
  sound = other = 0
  for more_sound, more_other in counts:
    sound += more_sound
    other += more_other
  return sound, other


def _to_compute(checked, counts):
  """The images whose bottleneck must be made, as retrain.py would decide."""
  sound, other = counts
  if checked.problem is None:
    Metrics.counter(NAMESPACE, 'reused').inc()
  elif other and not sound:
    # Every file disagrees: another module's cache, never overwritten.
    if checked.other_size:
      Metrics.distribution(NAMESPACE, 'other_size').update(checked.other_size)
    Metrics.counter(NAMESPACE, 'refused').inc()
  else:
    if checked.exists:
      logging.warning('Recomputing bad bottleneck file %s: %s',
                      checked.image.cache_path, checked.problem)
      Metrics.counter(NAMESPACE, 'recomputed').inc()
    yield checked.image


class _DecodeImages(beam.DoFn):
  """Decodes and resizes each image as retrain.py does; reports failures."""

  def __init__(self, decode):
    super().__init__()
    self._decode = decode

  def setup(self):
    graph = tf.Graph()
    with graph.as_default():
      self._decoder = image_decoding.FileDecoder.build(self._decode)
    self._session = tf.compat.v1.Session(graph=graph)

  def process(self, image):
    pixels, failure = self._decoder.decode_file(self._session,
                                                image.image_path)
    if failure:
      Metrics.counter(NAMESPACE, 'failed').inc()
      yield beam.pvalue.TaggedOutput('skipped',
                                     (image.image_path, failure.reason))
    else:
      yield image.cache_path, pixels

  def teardown(self):
    self._session.close()


class _Module:
  """The module in a session of its own: decoded images -> bottlenecks."""

  def __init__(self, spec):
    graph = tf.Graph()
    with graph.as_default():
      module = modules.load_module(spec)
      self._images = tf.compat.v1.placeholder(
          tf.float32, [None, *module.image_size, 3])
      self._bottlenecks = module.apply(self._images)
      init = tf.compat.v1.global_variables_initializer()
    self._session = tf.compat.v1.Session(graph=graph)
    self._session.run(init)

  def __call__(self, batch):
    return self._session.run(self._bottlenecks, {self._images: batch})


class ModuleHandler(tensorflow_inference.TFModelHandlerNumpy):
  """Beam's TensorFlow model handler, loading the module as retrain.py does.

  The handler's own loader takes Keras SavedModels only; retrain.py's
  modules are TF Hub and TF1 Hub modules and frozen graphs, loaded into a
  graph by poets.core.modules. The rest is Beam's: batching (fixed at
  retrain.py's batch size), one copy of the module per worker process shared by its
  threads, and the inference metrics.
  """

  def __init__(self, spec):
    super().__init__(spec.handle,
                     min_batch_size=graph_names.BATCH_SIZE,
                     max_batch_size=graph_names.BATCH_SIZE)
    self._spec = spec

  def load_model(self):
    return _Module(self._spec)


def _write(cache_path, result):
  bottlenecks.write_bottleneck(cache_path, result.inference)
  Metrics.counter(NAMESPACE, 'created').inc()


def _write_report(skipped, path):
  files.atomic_write(path, ''.join(json.dumps(entry) + '\n'
                                   for entry in sorted(skipped)))


def build(root, image_dir, bottleneck_dir, spec, module):
  """Adds the cache-making transforms to the pipeline `root`.

  `module` is the ModuleInfo of `spec` (its sizes and decoding are used;
  the workers load the module themselves).
  """
  checked = (
      root |
      'Class folders' >> beam.Create(image_listing.class_dirs(image_dir)) |
      'List images' >> beam.FlatMap(_list_class, image_dir, bottleneck_dir,
                                    spec.name) |
      'Spread images' >> beam.Reshuffle() |
      'Check the cache' >> beam.Map(_check_cache, module.bottleneck_size))
  counts = (
      checked
      | 'Sound or other size' >> beam.Map(_tally)
      | 'Count them' >> beam.CombineGlobally(_count))
  decoded = (
      checked
      | 'Keep what is missing' >> beam.FlatMap(
          _to_compute, beam.pvalue.AsSingleton(counts))
      | 'Decode' >> beam.ParDo(_DecodeImages(module.decode)).with_outputs(
          'skipped', main='images'))
  _ = (decoded.images
       | 'Run the module' >> inference.RunInference(
           inference.KeyedModelHandler(ModuleHandler(spec)))
       | 'Write the cache' >> beam.MapTuple(_write))
  _ = (decoded.skipped
       | 'Collect skipped' >> beam.combiners.ToList()
       | 'Write the report' >> beam.Map(
           _write_report, skipped_report_path(bottleneck_dir, spec.name)))


@dataclasses.dataclass
class Summary:
  """What a run did, from the pipeline's metrics and its skipped report."""
  created: int
  reused: int
  recomputed: int
  failed: list  # (image path, reason)


def _counter(metrics, name):
  found = [c for c in metrics['counters'] if c.key.metric.name == name]
  if not found:
    return 0
  result = found[0].committed
  return found[0].attempted if result is None else result


def run(options, image_dir, bottleneck_dir, spec):
  """Runs the pipeline with Beam `options`; returns a Summary.

  Raises PoetsError for the folder and cache problems retrain.py refuses.
  """
  module = modules.module_info(spec)
  files.check_writable(bottleneck_dir, '--bottleneck_dir')
  logging.info('Module %s: %dx%d images -> %d-value bottlenecks; cache in %s',
               spec.name, module.image_size[0], module.image_size[1],
               module.bottleneck_size, bottleneck_dir)
  root = beam.Pipeline(options=options)
  build(root, image_dir, bottleneck_dir, spec, module)
  result = root.run()
  result.wait_until_finish()
  metrics = result.metrics().query(MetricsFilter().with_namespace(NAMESPACE))
  if _counter(metrics, 'refused'):
    other_sizes = [d.committed or d.attempted
                   for d in metrics['distributions']
                   if d.key.metric.name == 'other_size']
    raise PoetsError(bottlenecks.foreign_cache_message(
        bottleneck_dir, other_sizes[0].max, module.bottleneck_size))
  with open(skipped_report_path(bottleneck_dir, spec.name)) as f:
    failed = [tuple(json.loads(line)) for line in f]
  for path, reason in failed:
    logging.warning('Skipping %s: %s', path, reason)
  summary = Summary(_counter(metrics, 'created'), _counter(metrics, 'reused'),
                    _counter(metrics, 'recomputed'), failed)
  logging.info('Bottlenecks: %d created (%d replacing bad cache files), %d '
               'reused, %d failed', summary.created, summary.recomputed,
               summary.reused, len(summary.failed))
  return summary
