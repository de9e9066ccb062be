"""Bottlenecks: run every image through the module once and cache the result.

The third stage. A bottleneck is the module's output for one image; training
only ever needs these, so each is computed once and kept as a text file in the
original's format (one line of comma-separated floats) at
`<bottleneck_dir>/<class folder>/<image name>_<module name>.txt`, readable by
the original retrain.py and vice versa.

Unlike the original (one session run per image), missing bottlenecks are
computed by a tf.data pipeline that reads and decodes images in parallel and
feeds the module batches of them. Each file is written to a temporary name and
renamed, so a killed run leaves no half-written file and a rerun resumes.
"""

import collections
import concurrent.futures
import dataclasses
import os

from absl import logging
import numpy as np
import tensorflow as tf
from tqdm import tqdm

from poets import images
from poets.files import atomic_write
from poets import modules
from poets.errors import PoetsError

# Images per session run: large enough to amortise the call, small enough
# that memory does not grow with the folder.
BATCH_SIZE = 32


@dataclasses.dataclass
class SplitBottlenecks:
  """The bottlenecks of one split, in memory, with what they belong to."""
  bottlenecks: np.ndarray  # float32 [n, bottleneck_size]
  ground_truth: np.ndarray  # int64 [n], index into ImageLists.classes
  filenames: list[str]  # the image paths, for the misclassified listing


@dataclasses.dataclass
class CacheSummary:
  created: int = 0
  reused: int = 0
  recomputed: int = 0  # cache files that were unreadable and made again
  failed: list = dataclasses.field(default_factory=list)  # (path, reason)


def bottleneck_path(bottleneck_dir, class_dir, image_name, module_name):
  return os.path.join(bottleneck_dir, class_dir,
                      f'{image_name}_{module_name}.txt')


def format_bottleneck(values):
  """The original's text: str() of each float32, comma-separated."""
  return ','.join(str(v) for v in np.asarray(values, np.float32))


def _write_bottleneck(path, values):
  atomic_write(path, format_bottleneck(values))


def read_bottleneck(path):
  """Reads one cache file; returns (values, None) or (None, why it is bad)."""
  try:
    with open(path) as f:
      text = f.read()
  except OSError as e:
    return None, e.strerror or str(e)
  if not text.strip():
    return None, 'empty'
  try:
    values = np.array(text.strip().split(','), dtype=np.float32)
  except ValueError:
    return None, 'not comma-separated numbers'
  if not np.all(np.isfinite(values)):
    return None, 'holds NaN or infinity'
  return values, None


@dataclasses.dataclass
class _Entry:
  """One image of the run and where its bottleneck goes."""
  split: str
  class_index: int
  image_path: str
  cache_path: str


def _entries(image_lists, bottleneck_dir, module_name):
  for class_index, image_class in enumerate(image_lists.classes):
    for split in images.SPLITS:
      for image_name in image_class.split(split):
        yield _Entry(split, class_index,
                     image_lists.image_path(class_index, image_name),
                     bottleneck_path(bottleneck_dir, image_class.dir,
                                     image_name, module_name))


def _read_cache(entries, bottleneck_size, bottleneck_dir, summary):
  """Loads the cached bottlenecks that are sound; returns {index: values}."""
  found = {}
  wrong_sizes = {}
  for index, entry in enumerate(entries):
    if not os.path.exists(entry.cache_path):
      continue
    values, problem = read_bottleneck(entry.cache_path)
    if values is not None and values.size != bottleneck_size:
      wrong_sizes[index] = values.size
      problem = f'{values.size} values, expected {bottleneck_size}'
    if problem:
      logging.warning('Recomputing bad bottleneck file %s: %s',
                      entry.cache_path, problem)
      summary.recomputed += 1
      continue
    found[index] = values
  if wrong_sizes and not found:
    other_size = next(iter(wrong_sizes.values()))
    # Every file disagrees: not damage but a different module's cache.
    raise PoetsError(
        f'The cached bottlenecks in {bottleneck_dir} have {other_size} values but this module makes {bottleneck_size}: '
        'they were made by another module of the same name. Pass another '
        '--bottleneck_dir (or move that folder away) and rerun.')
  return found


def _decode_error(session, contents_input, decoded, path):
  """Why an image failed: rerun its decode alone to get TensorFlow's message."""
  try:
    with open(path, 'rb') as f:
      session.run(decoded, {contents_input: f.read()})
  except OSError as e:
    return e.strerror or str(e)
  except tf.errors.OpError as e:
    return images.decode_failure_reason(e)
  return 'could not be read'


def _compute(entries, todo, module_spec, summary):
  """Runs the images at indices `todo` through the module, batch by batch.

  Yields (index, bottleneck) as results arrive; images that fail to read or
  decode are recorded in `summary.failed` and skipped.
  """
  paths = [entries[i].image_path for i in todo]
  with tf.Graph().as_default() as graph:
    module = modules.load_module(module_spec)

    def load(index, path):
      return index, module.decode(tf.io.read_file(path))

    # Autotuning's model thread held up closing the session in about half
    # of our runs (4 s typical, 10 s seen, on 600 photos); without it
    # AUTOTUNE still decodes one image per core at a time.
    options = tf.data.Options()
    options.autotune.enabled = False
    dataset = (tf.data.Dataset.from_tensor_slices((np.array(todo, np.int64),
                                                   paths))
               .map(load, num_parallel_calls=tf.data.AUTOTUNE)
               .ignore_errors()
               .batch(BATCH_SIZE)
               .prefetch(2)
               .with_options(options))
    indices, batch = tf.compat.v1.data.make_one_shot_iterator(
        dataset).get_next()
    bottlenecks = module.apply(batch)
    contents_input = tf.compat.v1.placeholder(tf.string)
    decoded = module.decode(contents_input)
    init = tf.compat.v1.global_variables_initializer()
  done = set()
  with tf.compat.v1.Session(graph=graph) as session:
    session.run(init)
    with tqdm(total=len(todo), desc='Bottlenecks', unit='img',
              smoothing=0.1) as progress:
      while True:
        try:
          batch_indices, values = session.run([indices, bottlenecks])
        except tf.errors.OutOfRangeError:
          break
        for index, value in zip(batch_indices, values):
          done.add(int(index))
          yield int(index), value
        progress.update(len(batch_indices))
      for index in todo:
        if index not in done:
          path = entries[index].image_path
          reason = _decode_error(session, contents_input, decoded, path)
          logging.warning('Skipping %s: %s', path, reason)
          summary.failed.append((path, reason))
          progress.update(1)


def cache_bottlenecks(image_lists, module, bottleneck_dir):
  """Makes sure every image has a cached bottleneck and loads them all.

  `module` is a LoadedModule (its spec and sizes are used; the computation
  loads the module again in a graph of its own). Returns ({split:
  SplitBottlenecks}, CacheSummary). Images that cannot be decoded are left out
  of the splits and listed in the summary.
  """
  entries = list(_entries(image_lists, bottleneck_dir, module.spec.name))
  summary = CacheSummary()
  values = _read_cache(entries, module.bottleneck_size, bottleneck_dir,
                       summary)
  summary.reused = len(values)
  todo = [i for i in range(len(entries)) if i not in values]
  if todo:
    logging.info('Creating %d bottleneck files in %s (%d already cached)',
                 len(todo), bottleneck_dir, summary.reused)
    # One writer thread formats and writes while the module runs the next
    # batch; on the way out (even Ctrl-C) it finishes what was computed.
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as writer:
      pending = collections.deque()
      for index, bottleneck in _compute(entries, todo, module.spec,
                                        summary):
        pending.append(writer.submit(_write_bottleneck,
                                     entries[index].cache_path, bottleneck))
        # The value as the file holds it, so cold and warm runs agree.
        values[index] = bottleneck
        summary.created += 1
        while pending and pending[0].done():
          pending.popleft().result()  # A failed write stops the run now.
      for write in pending:
        write.result()
  logging.info('Bottlenecks: %d created (%d replacing bad cache files), %d '
               'reused, %d failed', summary.created, summary.recomputed,
               summary.reused, len(summary.failed))
  return _by_split(entries, values, module.bottleneck_size), summary


def _by_split(entries, values, bottleneck_size):
  splits = {}
  for split in images.SPLITS:
    chosen = [i for i, e in enumerate(entries) if e.split == split and
              i in values]
    splits[split] = SplitBottlenecks(
        bottlenecks=(np.stack([values[i] for i in chosen]) if chosen else
                     np.zeros([0, bottleneck_size], np.float32)),
        ground_truth=np.array([entries[i].class_index for i in chosen],
                              np.int64),
        filenames=[entries[i].image_path for i in chosen])
  return splits
