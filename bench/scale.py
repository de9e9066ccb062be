r"""Scale: how each stage of retrain.py grows with the folder.

retrain.py on folders of 1,000, 10,000 and 100,000 generated photos (32x32
noisy solid-colour JPEGs in five classes, made once into --data_dir), each
run three times in a fresh child process: with an empty bottleneck folder
(cold), on the cache that run left with its index deleted (warm, text: every
file parsed), then with the index that run wrote (warm, index). The module
is a tiny one built like the tests' (a fixed projection of each image's
colour statistics) but with the default module's 1,280-value bottleneck, so
the cache files, the memory for bottlenecks and the training data are those
of a real run while the network costs nothing and the pipeline's own costs
show. One more point runs the default module (efficientnet_lite0) on
--default_module_images photos.

Seconds per stage come from the pipeline's own RunResult: listing and
splitting the folder, reading the cache, computing the missing bottlenecks
(and writing their files), training, export; peak resident memory is the
child's own (os.wait4). Printed as a table, drawn as a log-log plot (--plot).
Targets: every stage grows at most linearly with the images; a warm cache is
read at >= 20,000 files a second; peak memory at 100,000 images under 2 GB.
At the largest size the readers are also compared in this process, where
CPU seconds can be read beside wall seconds.

With --fine_tune_blocks N it measures instead the memory of a warm
`retrain.py --fine_tune_blocks N` (the default module) on folders of 3,670
and 100,000 generated photos: their cut cache is made up, valid files of the
cut's shape written as poets.core.cut_cache writes them, so that no photo
goes through the network. Printed: peak resident memory and its make-up at
the peak, anonymous against file-backed (the mapped cuts, which the kernel
may drop and read again), beside the bytes of cuts the run maps.

  python bench/scale.py [--quick] [--sizes 1000,10000,100000] [--steps 1000]
  python bench/scale.py --fine_tune_blocks 2 [--sizes 3670,100000] [--steps 100]
"""

import functools

import os
import sys
import tempfile

sys.path[0] = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

from absl import app  # noqa: E402
from absl import flags  # noqa: E402
from absl import logging  # noqa: E402
import matplotlib  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402
import tensorflow as tf  # noqa: E402

from bench import common  # noqa: E402
from poets.core import bottlenecks  # noqa: E402
from poets.core import cache_index  # noqa: E402
from poets.core import cut_cache  # noqa: E402
from poets.core import feeds  # noqa: E402
from poets.core import fine_tuning  # noqa: E402
from poets.core import image_listing  # noqa: E402
from poets.core import modules  # noqa: E402

matplotlib.use('Agg')
from matplotlib import pyplot  # noqa: E402

flags.DEFINE_list('sizes', None, 'Images per tiny-module point (default '
                  '1000,10000,100000; --quick: 60,300).')
flags.DEFINE_integer('default_module_images', None, 'Images of the point with '
                     'the default module; 0 = none (default 1000; --quick: '
                     '0).')
flags.DEFINE_integer('steps', None, 'Training steps of every run (default '
                     '1000; --quick: 20).')
flags.DEFINE_integer('read_sample', None, 'Cache files the readers are '
                     'compared on, at the largest size (default 10000; '
                     '--quick: 100).')
flags.DEFINE_integer('width', 1280, "The tiny module's bottleneck size.")
flags.DEFINE_integer('fine_tune_blocks', 0, 'Measure the memory of warm '
                     '--fine_tune_blocks runs of this N instead (default '
                     'sizes 3670,100000, steps 100; --quick: 60, 20).')
flags.DEFINE_string('data_dir', os.path.join(common.REPO_ROOT, 'tf_files',
                                             'bench_scale'),
                    'Where the generated photos and the tiny module are kept '
                    'between runs.')
flags.DEFINE_string('plot', None, 'The PNG to draw (default '
                    '<data_dir>/scale.png; --quick: <data_dir>/quick.png).')
FLAGS = flags.FLAGS

IMAGE_SIZE = 32
CLASS_COLOURS = {'amber': (230, 160, 20), 'blue': (30, 40, 220),
                 'green': (30, 200, 40), 'grey': (128, 128, 128),
                 'red': (220, 30, 30)}
STAGES = ('listing', 'cache read', 'computing', 'training', 'export')
SAME_WORK_STAGES = ('listing', 'training', 'export')
TARGET_FILES_PER_SECOND = 20_000
TARGET_PEAK_MIB = 2048
# Memory, not accuracy: the top trains for a few steps.
FINE_TUNE_STEPS = 5


class _TinyModule(tf.Module):
  """Images -> `width` values: a fixed projection of colour statistics."""

  def __init__(self, width):
    super().__init__()
    self.projection = tf.Variable(np.random.default_rng(0).normal(
        size=[6, width]).astype(np.float32))
    self.__call__ = tf.function(
        self._features, input_signature=[
            tf.TensorSpec([None, IMAGE_SIZE, IMAGE_SIZE, 3], tf.float32)])

  def _features(self, images):
    statistics = tf.concat([tf.reduce_mean(images, [1, 2]),
                            tf.math.reduce_std(images, [1, 2])], 1)
    return statistics @ self.projection


def _tiny_module(width):
  path = os.path.join(FLAGS.data_dir, f'tiny_module_{width}')
  if not os.path.isdir(path):
    building = path + '.partial'
    tf.saved_model.save(_TinyModule(width), building)
    os.rename(building, path)
  return path


def _photos(count):
  """A folder of `count` generated photos in five classes, made once."""
  path = os.path.join(FLAGS.data_dir, f'photos_{count}')
  if os.path.isdir(path):
    return path
  building = path + '.partial'
  rng = np.random.default_rng(count)
  for index, (name, colour) in enumerate(sorted(CLASS_COLOURS.items())):
    os.makedirs(os.path.join(building, name), exist_ok=True)
    for i in range(index, count, len(CLASS_COLOURS)):
      noise = rng.integers(-40, 41, size=[IMAGE_SIZE, IMAGE_SIZE, 3])
      pixels = np.clip(np.array(colour) + noise, 0, 255).astype(np.uint8)
      Image.fromarray(pixels).save(
          os.path.join(building, name, f'{name}_{i:06d}.jpg'), quality=90)
  os.rename(building, path)
  return path


def _point(module_name, module_flags, count, work, steps, read_sample=0):
  """Cold and warm runs on `count` photos; returns a row per run."""
  image_dir = _photos(count)
  bottleneck_dir = os.path.join(work, f'bottlenecks_{module_name}_{count}')
  spec_name = modules.resolve_module('', module_flags[1], work).name
  index = cache_index.index_path(bottleneck_dir, spec_name)
  rows = []
  for cache in ('cold', 'text', 'index'):
    if cache == 'text':
      os.remove(index)
    name = f'{module_name}_{count}_{cache}'
    seconds, peak, measured = common.retrain_in_child(
        ['--image_dir', image_dir, '--bottleneck_dir', bottleneck_dir,
         *module_flags, '--how_many_training_steps', str(steps),
         '--random_seed', '0'], work, name)
    row = {'module': module_name, 'images': count, 'cache': cache,
           'seconds': seconds, 'peak MiB': peak,
           'reused': measured['reused'], 'created': measured['created'],
           'indexed': measured['indexed'],
           'listing': measured['listing'],
           'cache read': measured['cache read'],
           'computing': measured['bottlenecks'] - measured['cache read'],
           'training': measured['training'], 'export': measured['export'],
           'accuracy': measured['accuracy']}
    rows.append(row)
    print(_format(row), flush=True)
  if read_sample:
    _compare_readers(image_dir, bottleneck_dir, spec_name, read_sample)
  return rows


def _compare_readers(image_dir, bottleneck_dir, module_name, sample):
  """The cache readers on the same warm files: one file at a time (before),
  chunks parsed on threads, the index.

  In this process, so CPU seconds (all threads) can be read beside wall
  seconds: the CPU rate moves much less with other work on the machine.
  """
  # pylint: disable=protected-access
  entries = list(
      bottlenecks._entries(image_listing.create_image_lists(image_dir, 10, 10),
                           bottleneck_dir, module_name))[:sample]
  names = bottlenecks._index_names(entries, bottleneck_dir)

  def read(index):
    values = feeds.feedable_empty([len(entries), FLAGS.width])
    summary = bottlenecks.CacheSummary()
    bottlenecks._read_cache(entries, names, values, np.zeros(
        len(entries), cache_index.IDENTITY), index, bottleneck_dir, summary)
    assert summary.indexed == (len(entries) if index else 0)

  def one_at_a_time():  # The reader before: a stat and a parse per file.
    for entry in entries:
      if os.path.exists(entry.cache_path):
        bottlenecks.read_bottleneck(entry.cache_path)

  def from_index():
    index = cache_index.load(cache_index.index_path(bottleneck_dir,
                                                    module_name), FLAGS.width)
    read(index)
    index.file.close()

  for name, reader in (
      ('one file at a time (before)', one_at_a_time),
      (f'text, chunks on {os.cpu_count()} threads', lambda: read(None)),
      ('index', from_index)):
    wall, cpu = common.timed(reader)
    print(f'  cache read, {len(entries)} warm files, {name}: '
          f'{len(entries) / wall:7.0f} files/s '
          f'({len(entries) / wall / TARGET_FILES_PER_SECOND:.2f}x the '
          f'target), {len(entries) / cpu:7.0f} files per CPU-second')


def _made_up_cuts(image_dir, bottleneck_dir, cut):
  """A cut file for every photo of `image_dir`, named and written as
  poets.core.cut_cache names and writes them: each class its own mean plus
  noise, so the layer has something to learn."""
  folder = cut_cache.cut_folder(bottleneck_dir, cut)
  image_lists = image_listing.create_image_lists(image_dir, 10, 10)
  rng = np.random.default_rng(0)
  means = rng.standard_normal([len(image_lists.classes), *cut.shape],
                              np.float32)
  for entry in bottlenecks.entries_of(
      image_lists, functools.partial(cut_cache.cut_path, folder)):
    cut_cache.write_cut(entry.cache_path, means[entry.class_index] +
                        rng.standard_normal(cut.shape, np.float32))


def _fine_tune_point(count, work, steps, cut):
  """A warm --fine_tune_blocks run on `count` photos; prints its memory."""
  image_dir = _photos(count)
  bottleneck_dir = os.path.join(work, 'bottlenecks')
  _made_up_cuts(image_dir, bottleneck_dir, cut)
  seconds, _, measured = common.retrain_in_child(
      ['--image_dir', image_dir, '--bottleneck_dir', bottleneck_dir,
       '--architecture', common.ARCHITECTURE, '--model_dir', FLAGS.model_dir,
       '--fine_tune_blocks', str(FLAGS.fine_tune_blocks),
       '--fine_tune_steps', str(FINE_TUNE_STEPS),
       '--how_many_training_steps', str(steps), '--random_seed', '0'],
      work, f'fine_tune_{count}')
  mapped = measured['reused'] * np.prod(cut.shape) * np.dtype(
      cut_cache.DTYPE).itemsize / 2**20
  at_peak = measured['at_peak_mib']
  print(f'{count:>7} {measured["reused"]:>7} {measured["created"]:>7} '
        f'{mapped:10.0f} {measured["own_peak_mib"]:8.0f} '
        f'{at_peak["RssAnon"]:8.0f} {at_peak["RssFile"]:8.0f} '
        f'{at_peak["RssShmem"]:8.0f} {seconds:7.1f}   {common.load()}',
        flush=True)


def _fine_tune_memory():
  sizes = [int(size) for size in common.by_mode(
      FLAGS.sizes, ['60'], ['3670', '100000'])]
  steps = common.by_mode(FLAGS.steps, 20, 100)
  common.module_spec()  # built before anything is measured
  cut = fine_tuning.find_cut(common.ARCHITECTURE, '', FLAGS.fine_tune_blocks)
  print(f'warm retrain.py --fine_tune_blocks {FLAGS.fine_tune_blocks} (cut '
        f'{"x".join(map(str, cut.shape))} float16 a photo, made up), {steps} '
        f'steps + {FINE_TUNE_STEPS} fine-tuning steps, each run a fresh '
        f'process; MiB; anon/file/shmem: resident at the peak')
  print(f'{"images":>7} {"reused":>7} {"created":>7} {"cuts mapped":>10} '
        f'{"peak":>8} {"anon":>8} {"file":>8} {"shmem":>8} {"wall s":>7}')
  for count in sizes:
    # Each point's cache is removed after it: 100,000 cuts are 1.9 GB.
    with tempfile.TemporaryDirectory(prefix='bench_scale_',
                                     dir=FLAGS.data_dir) as work:
      _fine_tune_point(count, work, steps, cut)


_HEADER = (f'{"module":<18} {"images":>7} {"cache":<5} {"listing":>8} '
           f'{"read":>7} {"files/s":>8} {"compute":>8} {"training":>8} '
           f'{"export":>7} {"wall s":>7} {"peak MiB":>8} {"accuracy":>8}')


def _files_per_second(row):
  if not row['reused'] or not row['cache read']:
    return float('nan')
  return row['reused'] / row['cache read']


def _format(row):
  return (f'{row["module"]:<18} {row["images"]:>7} {row["cache"]:<5} '
          f'{row["listing"]:8.2f} {row["cache read"]:7.2f} '
          f'{_files_per_second(row):8.0f} {row["computing"]:8.2f} '
          f'{row["training"]:8.2f} {row["export"]:7.2f} '
          f'{row["seconds"]:7.1f} {row["peak MiB"]:8.0f} ' +
          (f'{row["accuracy"]:8.1%}' if row['accuracy'] is not None
           else f'{"no test":>8}'))


def _growth(rows, stage):
  """The exponent k of seconds ~ images**k between the two largest folders,
  where fixed costs weigh least; each size's best run, where several did the
  same work."""
  best = {}
  for row in rows:
    best[row['images']] = min(best.get(row['images'], np.inf), row[stage])
  if len(best) < 2:
    return float('nan')
  (small, small_s), (large, large_s) = sorted(best.items())[-2:]
  if min(small_s, large_s) <= 0:
    return float('nan')
  return np.log(large_s / small_s) / np.log(large / small)


def _growths(rows, stages):
  return ', '.join(f'{stage} {_growth(rows, stage):.2f}' for stage in stages
                   if max(r[stage] for r in rows) > 0.05) or 'no stage'


def _verdicts(rows):
  """One line per target, from the tiny-module rows."""
  target = '(target: k <= 1 for every stage; stages under 0.05 s left out)'
  # Listing, training and export do the same work cold or warm: the best of
  # the three runs at a size is the least disturbed by the file system's
  # caches and the machine's other work.
  lines = [f'seconds ~ images^k between the two largest folders, best of the '
           f'three runs: k = {_growths(rows, SAME_WORK_STAGES)} {target}']
  for cache in ('cold', 'text', 'index'):
    chosen = [r for r in rows if r['cache'] == cache]
    lines.append(f'{cache}: k = '
                 f'{_growths(chosen, ("cache read", "computing"))} {target}')
  largest = max(r['images'] for r in rows)
  warm = [r for r in rows if r['cache'] != 'cold' and r['images'] == largest]
  for row in warm:
    rate = _files_per_second(row)
    lines.append(f'warm cache read at {largest} images, {row["cache"]}: '
                 f'{rate:.0f} files/s, {row["indexed"]} of {row["reused"]} '
                 f'from the index ({rate / TARGET_FILES_PER_SECOND:.2f}x the '
                 f'target {TARGET_FILES_PER_SECOND:,} files/s)')
  peak = max(r['peak MiB'] for r in rows if r['images'] == largest)
  lines.append(f'peak memory at {largest} images: {peak:.0f} MiB (target < '
               f'{TARGET_PEAK_MIB})')
  return lines


def _plot(rows, path):
  figure, (times, memory) = pyplot.subplots(1, 2, figsize=(12, 5))
  tiny = [r for r in rows if r['module'] != common.ARCHITECTURE]
  sizes = sorted({r['images'] for r in tiny})
  for stage, colour in zip(STAGES, pyplot.cm.tab10.colors):
    for cache, style in (('cold', '-'), ('text', '--'), ('index', '-.')):
      chosen = sorted((r['images'], r[stage]) for r in tiny
                      if r['cache'] == cache and r[stage] > 0)
      if chosen:
        times.plot(*zip(*chosen), style, marker='o', color=colour,
                   label=f'{stage}, {cache}')
  reference = np.array([sizes[0], sizes[-1]], float)
  times.plot(reference, reference / reference[0] * 0.1, ':', color='black',
             label='linear growth')
  for row in rows:
    if row['module'] == common.ARCHITECTURE and row['cache'] == 'cold':
      times.plot(row['images'], row['computing'], 'k*', markersize=10)
  times.set(xscale='log', yscale='log', xlabel='images',
            ylabel='seconds', title='Seconds per stage (*: computing with '
            f'{common.ARCHITECTURE}, cold)')
  times.legend(fontsize=7, ncol=2)
  for cache, style in (('cold', '-'), ('text', '--'), ('index', '-.')):
    chosen = sorted((r['images'], r['peak MiB']) for r in tiny
                    if r['cache'] == cache)
    memory.plot(*zip(*chosen), style, marker='o', label=cache)
  memory.axhline(TARGET_PEAK_MIB, color='red', linestyle=':',
                 label='target')
  memory.set(xscale='log', xlabel='images', ylabel='peak resident MiB',
             title=f'Peak memory ({FLAGS.width}-value bottlenecks)')
  memory.set_ylim(bottom=0)
  memory.legend()
  figure.tight_layout()
  figure.savefig(path, dpi=100)


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)
  tf.get_logger().setLevel('ERROR')
  sizes = [int(size) for size in common.by_mode(
      FLAGS.sizes, ['60', '300'], ['1000', '10000', '100000'])]
  default_images = common.by_mode(FLAGS.default_module_images, 0, 1000)
  steps = common.by_mode(FLAGS.steps, 20, 1000)
  read_sample = common.by_mode(FLAGS.read_sample, 100, 10_000)
  plot = FLAGS.plot or os.path.join(
      FLAGS.data_dir, 'quick.png' if FLAGS.quick else 'scale.png')
  os.makedirs(FLAGS.data_dir, exist_ok=True)
  if FLAGS.fine_tune_blocks:
    _fine_tune_memory()
    return
  tiny = _tiny_module(FLAGS.width)
  for count in [*sizes, default_images]:
    if count:
      _photos(count)
  if default_images:
    common.module_spec()  # built before anything is timed
  print(f'retrain.py, {steps} steps, each run a fresh process; seconds per '
        f'stage from its RunResult; {common.load()}')
  print(_HEADER)
  rows = []
  for count in sizes:
    # Each point's cache is removed after it: 100,000 files are 1.5 GB.
    with tempfile.TemporaryDirectory(prefix='bench_scale_',
                                     dir=FLAGS.data_dir) as work:
      rows += _point(f'tiny_{FLAGS.width}', ['--tfhub_module', tiny,
                                             '--model_dir', work],
                     count, work, steps,
                     read_sample if count == max(sizes) else 0)
  if default_images:
    with tempfile.TemporaryDirectory(prefix='bench_scale_',
                                     dir=FLAGS.data_dir) as work:
      rows += _point(common.ARCHITECTURE,
                     ['--architecture', common.ARCHITECTURE,
                      '--model_dir', FLAGS.model_dir],
                     default_images, work, steps)
  for line in _verdicts([r for r in rows
                         if r['module'] != common.ARCHITECTURE]):
    print(line)
  _plot(rows, plot)
  print(f'plot: {plot}   {common.load()}')


if __name__ == '__main__':
  app.run(main)
