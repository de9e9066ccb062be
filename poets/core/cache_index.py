"""A binary index of the text bottleneck cache, so a warm run need not parse.

The text files stay the cache (the original's format, read by its scripts
and ours); parsing them costs ~120 µs of CPU per file, too slow for 100,000
photos. So after a run has every bottleneck in memory it writes, per module,
`<bottleneck_dir>/.bottleneck_index_<module>.npy`: a NumPy .npy of the
float32 values, followed by a second .npy of each row's cache file (path
relative to bottleneck_dir) and its identity (size, mtime_ns, inode). The
leading dot keeps it apart from class folders, which are never hidden.

A run takes a row from the index only when its text file has the same
identity now and was last changed before the index was written (a file
rewritten within one clock tick of its indexing keeps its mtime: git's "racy
clean" case); everything else is parsed as before. A hand-edited file's new
values therefore win, and a damaged or foreign index is ignored with one
warning and rewritten.
"""

import dataclasses
import os

from absl import logging
import numpy as np

from poets.files import NAME_MAX, atomic_file, fitted_name

IDENTITY = np.dtype([('size', '<i8'), ('mtime_ns', '<i8'), ('inode', '<u8')])
# Index rows copied at a time, so the memory mapped for a copy stays small.
COPY_CHUNK = 4096


def index_path(bottleneck_dir, module_name):
  name = fitted_name(f'.bottleneck_index_{module_name}',
                     NAME_MAX - len('.npy'))
  return os.path.join(bottleneck_dir, f'{name}.npy')


def identity_of(path):
  """What changes when the file does: an edit in place changes its mtime (and
  mostly its size), an atomic rewrite gives it a new inode."""
  stat = os.stat(path)
  return stat.st_size, stat.st_mtime_ns, stat.st_ino


def _same(a, b):
  return np.logical_and.reduce([a[field] == b[field]
                                for field in IDENTITY.names])


@dataclasses.dataclass
class Index:
  """An index as found on disk; its file stays open, so a concurrent run
  replacing it cannot change what this run reads."""
  file: object
  values_offset: int
  bottleneck_size: int
  rows: np.ndarray  # path (relative, bytes) and IDENTITY fields per row
  positions: dict  # path -> row
  written_ns: int  # the index file's mtime; files changed since are parsed

  def values(self, rows):
    """A copy of rows of the values (sorted), mapped only over their span
    and unmapped on return, so mapped pages never add up in memory."""
    first = int(rows[0])
    span = np.memmap(self.file, np.float32, 'r', self.values_offset +
                     first * self.bottleneck_size * 4,
                     (int(rows[-1]) - first + 1, self.bottleneck_size))
    return np.array(span[rows - first])


def load(path, bottleneck_size):
  """The index at `path`, or None if there is none or it is unusable."""
  try:
    f = open(path, 'rb')
  except FileNotFoundError:
    return None
  except OSError as e:
    logging.warning('Ignoring the bottleneck index %s: %s', path, e.strerror)
    return None
  try:
    if np.lib.format.read_magic(f) != (1, 0):
      raise ValueError('unknown version')
    shape, fortran_order, dtype = np.lib.format.read_array_header_1_0(f)
    if dtype != np.float32 or fortran_order or len(shape) != 2:
      raise ValueError('not a table of float32 values')
    values_offset = f.tell()
    f.seek(values_offset + shape[0] * shape[1] * 4)
    rows = np.lib.format.read_array(f, allow_pickle=False)
    if (rows.dtype.names != ('path', *IDENTITY.names) or
        rows.shape != (shape[0],)):
      raise ValueError('its rows do not match its values')
    if shape[1] != bottleneck_size:
      raise ValueError(f'{shape[1]} values a row, not {bottleneck_size}')
    return Index(f, values_offset, bottleneck_size, rows,
                 {name: row for row, name in enumerate(rows['path'].tolist())},
                 os.fstat(f.fileno()).st_mtime_ns)
  except (ValueError, EOFError, OSError) as e:
    f.close()
    logging.warning('Ignoring the bottleneck index %s (%s); it will be '
                    'written again.', path, e)
    return None


def take(index, names, identities, values, rows):
  """Fills `values[rows]` from the index where it holds that file as it is.

  `names` are the cache files' relative paths (bytes), `identities` their
  IDENTITY now. Returns a mask over `rows`: which were filled.
  """
  positions = np.array([index.positions.get(name, -1) for name in names],
                       np.int64)
  found = positions >= 0
  candidates = np.flatnonzero(found)
  indexed = index.rows[positions[candidates]]
  found[candidates] = (_same(indexed, identities[candidates]) &
                       (identities['mtime_ns'][candidates] <
                        index.written_ns))
  # In index order, so each chunk maps one short span of the file.
  chosen = np.flatnonzero(found)
  chosen = chosen[np.argsort(positions[chosen], kind='stable')]
  for start in range(0, len(chosen), COPY_CHUNK):
    part = chosen[start:start + COPY_CHUNK]
    taken = index.values(positions[part])
    # Damage inside the values would otherwise pass as a bottleneck.
    finite = np.isfinite(taken).all(axis=1)
    values[rows[part[finite]]] = taken[finite]
    found[part[~finite]] = False
  return found


def write(path, values, rows, names, identities, old, bottleneck_dir):
  """Writes the index of `values[rows]`, named `names`, with `identities`.

  Rows of the `old` index for files this run did not use are kept while
  their files are unchanged, so a run on a subset of the folder leaves a
  later full run its speed. A failure to write costs only that speed.
  """
  kept = np.zeros(0, np.int64)
  width = max([len(name) for name in names] + [1])
  if old is not None:
    ours = set(names)
    kept = np.array([row for row, name in enumerate(old.rows['path'].tolist())
                     if name not in ours and _unchanged(old, row,
                                                        bottleneck_dir)],
                    np.int64)
    width = max(width, old.rows.dtype['path'].itemsize)
  table = np.zeros(len(names) + len(kept),
                   [('path', f'S{width}'), *IDENTITY.descr])
  table['path'][:len(names)] = names
  for field in IDENTITY.names:
    table[field][:len(names)] = identities[field]
  if len(kept):
    table[len(names):] = old.rows[kept]
  try:
    with atomic_file(path) as f:
      np.lib.format.write_array_header_1_0(f, {
          'descr': '<f4', 'fortran_order': False,
          'shape': (len(table), values.shape[1])})
      for start in range(0, len(rows), COPY_CHUNK):
        f.write(values[rows[start:start + COPY_CHUNK]])
      for start in range(0, len(kept), COPY_CHUNK):
        f.write(old.values(kept[start:start + COPY_CHUNK]))
      np.lib.format.write_array(f, table, version=(1, 0), allow_pickle=False)
  except OSError as e:
    logging.warning('Could not write the bottleneck index %s (%s); the next '
                    'run parses the text files again.', path, e.strerror)


def _unchanged(index, row, bottleneck_dir):
  entry = index.rows[row]
  try:
    now = identity_of(os.path.join(bottleneck_dir,
                                   os.fsdecode(entry['path'])))
  except OSError:
    return False
  return (now == (entry['size'], entry['mtime_ns'], entry['inode']) and
          now[1] < index.written_ns)
