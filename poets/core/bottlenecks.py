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

Every bottleneck of the run goes into one array; the splits are slices of
it, so memory is one copy of the bottlenecks. A warm run copies the rows of
unchanged files from the cache's binary index (poets/core/cache_index.py) and
parses only the rest, by threads, each a chunk of files with one TensorFlow
call; then it brings the index up to date.
"""

import collections
import concurrent.futures
import dataclasses
import functools
import os
import time

from absl import logging
import numpy as np
import tensorflow as tf

from poets import progress
from poets.core import cache_index
from poets.core import feeds
from poets.core import graph_names
from poets.core import image_decoding
from poets.core import image_listing
from poets.core import modules
from poets.errors import PoetsError
from poets.files import NAME_MAX, atomic_write, fitted_name

# Cache files parsed by one TensorFlow call: enough that the call's overhead
# vanishes, few enough that a damaged file costs a re-read of only these.
READ_CHUNK = 256
# Files computed but not yet written: the writer can fall behind a fast
# module, and a queue of 100,000 of them would hold memory for nothing.
MAX_PENDING_WRITES = 4 * graph_names.BATCH_SIZE


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
  indexed: int = 0  # of the reused, those copied from the index unparsed
  recomputed: int = 0  # cache files that were unreadable and made again
  failed: list = dataclasses.field(default_factory=list)  # (path, reason)
  read_seconds: float = 0.0  # reading and checking the cached files


def bottleneck_path(bottleneck_dir, class_dir, image_name, module_name):
  """The original's `<class>/<image>_<module>.txt`, shortened (uniquely) when
  the photo's name is so long that this would pass the file name limit."""
  folder, name = os.path.split(image_name)
  cache_name = fitted_name(f'{name}_{module_name}', NAME_MAX - len('.txt'))
  return os.path.join(bottleneck_dir, class_dir, folder, f'{cache_name}.txt')


def format_bottleneck(values):
  """The original's text: str() of each float32, comma-separated."""
  return ','.join(str(v) for v in np.asarray(values, np.float32))


def write_bottleneck(path, values):
  atomic_write(path, format_bottleneck(values))


def _write_for_index(path, values):
  """Writes a cache file; returns its identity, for the index."""
  write_bottleneck(path, values)
  return cache_index.identity_of(path)


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


def entries_of(image_lists, cache_path):
  """Every image, split by split and class by class within a split, with
  its cache file `cache_path(class folder, image name)`.

  In that order each split is one block of rows, sorted by class as training
  needs, so the splits can be slices of one array instead of copies.
  """
  for split in image_listing.SPLITS:
    for class_index, image_class in enumerate(image_lists.classes):
      for image_name in image_class.split(split):
        yield _Entry(split, class_index,
                     image_lists.image_path(class_index, image_name),
                     cache_path(image_class.dir, image_name))


def _entries(image_lists, bottleneck_dir, module_name):
  return entries_of(image_lists, functools.partial(
      bottleneck_path, bottleneck_dir, module_name=module_name))


def _index_names(entries, bottleneck_dir):
  """The cache files' paths as the index names them: relative, as bytes."""
  prefix = os.path.join(bottleneck_dir, '')
  return [os.fsencode(e.cache_path[len(prefix):]) for e in entries]


def existing(paths):
  """Which of `paths` exist: one listing per folder, not one stat per file."""
  listed = {}
  found = np.zeros(len(paths), bool)
  for index, path in enumerate(paths):
    folder, name = os.path.split(path)
    if folder not in listed:
      try:
        listed[folder] = set(os.listdir(folder or '.'))
      except OSError:  # No such folder yet: nothing cached there.
        listed[folder] = set()
    found[index] = name in listed[folder]
  return found


def _parse_together(paths, bottleneck_size):
  """Values of cache files parsed in one TensorFlow call, [n, size].

  TensorFlow parses outside the GIL, so threads running this use every core,
  which Python's float() cannot. None if any file is unreadable, holds
  anything but numbers, or has the wrong count or non-finite values:
  read_bottleneck then says which and why.
  """
  texts = []
  for path in paths:
    try:
      with open(path, 'rb') as f:
        texts.append(f.read())
    except OSError:
      return None
  try:
    parsed = tf.strings.to_number(tf.strings.split(texts, ','), tf.float32)
  except tf.errors.InvalidArgumentError:
    return None
  values = parsed.flat_values.numpy()
  if (values.size != len(paths) * bottleneck_size or
      np.any(parsed.row_lengths().numpy() != bottleneck_size) or
      not np.all(np.isfinite(values))):
    return None
  return values.reshape(len(paths), bottleneck_size)


def _read_cache(entries, names, values, identities, index, bottleneck_dir,
                summary):
  """Fills rows of `values` from the sound cache files; returns which.

  Rows come from `index` where it holds the file unchanged; the rest are
  parsed by threads, each a chunk of READ_CHUNK files; a chunk with a damaged
  file is read again one file at a time to find it and say why. Records each
  file's identity as it was before reading it.
  """
  bottleneck_size = values.shape[1]
  cached = []
  for row in np.flatnonzero(existing([e.cache_path for e in entries])):
    try:
      identities[row] = cache_index.identity_of(entries[row].cache_path)
      cached.append(row)
    except OSError:  # Gone since the listing: made again.
      pass
  cached = np.array(cached, np.int64)
  found = np.zeros(len(entries), bool)
  if index is not None and len(cached):
    indexed = cache_index.take(index, [names[row] for row in cached],
                               identities[cached], values, cached)
    found[cached[indexed]] = True
    summary.indexed = int(indexed.sum())
    cached = cached[~indexed]
  chunks = [cached[i:i + READ_CHUNK] for i in range(0, len(cached),
                                                     READ_CHUNK)]

  def read(rows):
    paths = [entries[row].cache_path for row in rows]
    parsed = _parse_together(paths, bottleneck_size)
    if parsed is not None:
      values[rows] = parsed
      return rows, []
    sound, problems = [], []
    for row, path in zip(rows, paths):
      value, problem = read_bottleneck(path)
      if value is not None and value.size != bottleneck_size:
        problems.append((path, f'{value.size} values, expected '
                         f'{bottleneck_size}', value.size))
      elif problem:
        problems.append((path, problem, None))
      else:
        values[row] = value
        sound.append(row)
    return sound, problems

  wrong_sizes = []
  with concurrent.futures.ThreadPoolExecutor(os.cpu_count()) as pool:
    for sound, problems in pool.map(read, chunks):
      found[sound] = True
      for path, problem, size in problems:
        logging.warning('Recomputing bad bottleneck file %s: %s', path,
                        problem)
        summary.recomputed += 1
        if size is not None:
          wrong_sizes.append(size)
  if wrong_sizes and not found.any():
    # Every file disagrees: not damage but a different module's cache.
    raise PoetsError(foreign_cache_message(bottleneck_dir, wrong_sizes[0],
                                           bottleneck_size))
  return found


def foreign_cache_message(bottleneck_dir, other_size, bottleneck_size):
  return (f'The cached bottlenecks in {bottleneck_dir} have {other_size} '
          f'values but this module makes {bottleneck_size}: they were made '
          'by another module of the same name. Pass another --bottleneck_dir '
          '(or move that folder away) and rerun.')


def compute(entries, todo, load_module, summary):
  """Runs the images at indices `todo` through the module that
  `load_module()` loads into the current graph, batch by batch.

  Yields (index, bottleneck) as results arrive; images that fail to read or
  decode are recorded in `summary.failed` and skipped.
  """
  with tf.Graph().as_default() as graph:
    module = load_module()
    decoded = image_decoding.decode_in_batches(
        [entries[i].image_path for i in todo], module.decode,
        graph_names.BATCH_SIZE)
    bottlenecks = module.apply(decoded.images)
    init = tf.compat.v1.global_variables_initializer()
  done = []
  with tf.compat.v1.Session(graph=graph) as session:
    session.run(init)
    with progress.progress(len(todo), 'Bottlenecks', 'img') as bar:
      for positions, values in image_decoding.each_batch(
          session, [decoded.indices, bottlenecks]):
        for position, value in zip(positions, values):
          done.append(int(position))
          yield todo[position], value
        bar.update(len(positions))
      for position, failure in decoded.failures(session, done):
        path = entries[todo[position]].image_path
        reason = failure.reason if failure else 'could not be read'
        logging.warning('Skipping %s: %s', path, reason)
        summary.failed.append((path, reason))
        bar.update(1)


def cache_bottlenecks(image_lists, module, bottleneck_dir):
  """Makes sure every image has a cached bottleneck and loads them all.

  `module` is a ModuleInfo (its spec and sizes are used; the computation
  loads the module in a graph of its own). Returns ({split:
  SplitBottlenecks}, CacheSummary). Images that cannot be decoded are left out
  of the splits and listed in the summary.
  """
  entries = list(_entries(image_lists, bottleneck_dir, module.spec.name))
  names = _index_names(entries, bottleneck_dir)
  summary = CacheSummary()
  # Rows are only touched (and take memory) as they are filled.
  values = feeds.feedable_empty([len(entries), module.bottleneck_size])
  identities = np.zeros(len(entries), cache_index.IDENTITY)
  index_path = cache_index.index_path(bottleneck_dir, module.spec.name)
  start = time.perf_counter()
  index = cache_index.load(index_path, module.bottleneck_size)
  try:
    have = _read_cache(entries, names, values, identities, index,
                       bottleneck_dir, summary)
    summary.read_seconds = time.perf_counter() - start
    summary.reused = int(have.sum())
    if summary.indexed:
      logging.info('%d bottlenecks from the index %s, %d parsed',
                   summary.indexed, index_path,
                   summary.reused - summary.indexed)
    _create_missing(entries, values, identities, have, module.spec, summary,
                    bottleneck_dir)
    kept = np.flatnonzero(have)
    if summary.indexed < len(kept):  # Anything parsed or made: news.
      cache_index.write(index_path, values, kept, [names[i] for i in kept],
                        identities[kept], index, bottleneck_dir)
  finally:
    if index is not None:
      index.file.close()
  logging.info('Bottlenecks: %d created (%d replacing bad cache files), %d '
               'reused, %d failed', summary.created, summary.recomputed,
               summary.reused, len(summary.failed))
  return by_split(entries, values, have), summary


def _create_missing(entries, values, identities, have, module_spec, summary,
                    bottleneck_dir):
  """Computes and writes the bottlenecks `have` lacks, filling their rows."""
  todo = np.flatnonzero(~have).tolist()
  if not todo:
    return
  logging.info('Creating %d bottleneck files in %s (%d already cached)',
               len(todo), bottleneck_dir, summary.reused)
  # One writer thread formats and writes while the module runs the next
  # batch; on the way out (even Ctrl-C) it finishes what was computed.
  with concurrent.futures.ThreadPoolExecutor(max_workers=1) as writer:
    pending = collections.deque()
    for index, bottleneck in compute(
        entries, todo, functools.partial(modules.load_module, module_spec),
        summary):
      # The value as the file holds it, so cold and warm runs agree.
      values[index] = bottleneck
      have[index] = True
      summary.created += 1
      # The writer gets the row of `values`, not the batch, so no batch is
      # kept alive while it catches up.
      pending.append((index, writer.submit(
          _write_for_index, entries[index].cache_path, values[index])))
      while pending and (pending[0][1].done() or
                         len(pending) > MAX_PENDING_WRITES):
        _finish_write(pending.popleft(), identities)
    while pending:
      _finish_write(pending.popleft(), identities)


def _finish_write(pending, identities):
  index, write = pending
  identities[index] = write.result()  # A failed write stops the run now.


def by_split(entries, values, have):
  """The splits as slices of `values`, without the images that failed."""
  kept = np.flatnonzero(have)
  if len(kept) < len(entries):
    # Close the failed images' gaps in place: a copy of every bottleneck
    # would double the peak memory of a large folder.
    for target, source in enumerate(kept):
      if target != source:
        values[target] = values[source]
  splits = {}
  start = 0
  for split in image_listing.SPLITS:
    chosen = [entries[i] for i in kept if entries[i].split == split]
    end = start + len(chosen)
    splits[split] = SplitBottlenecks(
        bottlenecks=values[start:end],
        ground_truth=np.array([e.class_index for e in chosen], np.int64),
        filenames=[e.image_path for e in chosen])
    start = end
  return splits
