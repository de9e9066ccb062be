"""The cut cache: each image's activation at the cut, one .npy file a photo.

With `--fine_tune_blocks N` the frozen bottom of the network runs once per
image and its output, the input of the first block that trains, is kept at

  <bottleneck_dir>/<network>_cut<block>/<class folder>/<image name>.npy

(`efficientnet_lite0_cut14` for N=2), so different networks and cuts never
share a file. Each file is a NumPy .npy of float16 [height, width, channels]:
its header states dtype and shape, so a damaged or foreign file is told from
a sound one and made again; float16 halves the size of float32, and np.load
reads it with no parsing (docs/fine_tuning.md has the figures). Files are
written under a temporary name and renamed, so a killed run leaves no half
file and a rerun resumes where it stopped.

A run holds every cut in one array whose splits are slices, as the
bottleneck cache does, but the array lives in an unnamed temporary file
mapped into memory: the kernel keeps in RAM what fits and pages out the
rest, so a large folder does not need all its cuts resident.
"""

import functools
import io
import os
import tempfile
import time

from absl import logging
import numpy as np

from poets.core import bottlenecks
from poets.core import fine_tuning
from poets.files import NAME_MAX, atomic_write, fitted_name

DTYPE = np.float16
_FLOAT16_MAX = float(np.finfo(DTYPE).max)


def cut_folder(bottleneck_dir, cut):
  return os.path.join(bottleneck_dir, cut.name)


def cut_path(folder, class_dir, image_name):
  """`<folder>/<class>/<image name>.npy`, shortened (uniquely) when the
  photo's name is so long that this would pass the file name limit."""
  subfolder, name = os.path.split(image_name)
  return os.path.join(folder, class_dir, subfolder,
                      fitted_name(name, NAME_MAX - len('.npy')) + '.npy')


def write_cut(path, values):
  """Writes one cut file; returns the values as it holds them."""
  # Clipped, so that no value becomes infinite in float16.
  stored = np.clip(values, -_FLOAT16_MAX, _FLOAT16_MAX).astype(DTYPE)
  buffer = io.BytesIO()
  np.save(buffer, stored, allow_pickle=False)
  atomic_write(path, buffer.getvalue())
  return stored


def read_cut(path, shape):
  """Reads one cut file; returns (values, None) or (None, why it is bad)."""
  try:
    values = np.load(path, allow_pickle=False)
  except OSError as e:
    return None, e.strerror or str(e)
  except (ValueError, EOFError) as e:
    return None, f'not a NumPy array file ({e})'
  if values.dtype != DTYPE or values.shape != tuple(shape):
    return None, (f'{values.dtype} {list(values.shape)}, expected '
                  f'{np.dtype(DTYPE)} {list(shape)}')
  if not np.all(np.isfinite(values)):
    return None, 'holds NaN or infinity'
  return values, None


def _mapped_array(folder, shape):
  """An uninitialised array backed by an unnamed file in `folder`."""
  if not shape[0]:
    return np.empty(shape, DTYPE)
  os.makedirs(folder, exist_ok=True)
  with tempfile.TemporaryFile(dir=folder) as backing:
    # The mapping keeps the file alive; it disappears with the array.
    return np.memmap(backing, DTYPE, 'w+', shape=tuple(shape))


def cache_cuts(image_lists, module, cut, bottleneck_dir):
  """Makes sure every image has a cut file and maps them all.

  `module` is the ModuleInfo of the embedded network (for its decoding);
  `cut` a fine_tuning.Cut. Returns ({split: SplitBottlenecks whose
  `bottlenecks` are the cuts, float16 [n, h, w, c]}, CacheSummary). Images
  that cannot be decoded are left out and listed in the summary.
  """
  folder = cut_folder(bottleneck_dir, cut)
  entries = list(bottlenecks.entries_of(
      image_lists, functools.partial(cut_path, folder)))
  summary = bottlenecks.CacheSummary()
  values = _mapped_array(folder, [len(entries), *cut.shape])
  have = np.zeros(len(entries), bool)
  start = time.perf_counter()
  for row in np.flatnonzero(bottlenecks.existing(
      [e.cache_path for e in entries])):
    value, problem = read_cut(entries[row].cache_path, cut.shape)
    if problem:
      logging.warning('Recomputing bad cut file %s: %s',
                      entries[row].cache_path, problem)
      summary.recomputed += 1
      continue
    values[row] = value
    have[row] = True
  summary.read_seconds = time.perf_counter() - start
  summary.reused = int(have.sum())
  todo = np.flatnonzero(~have).tolist()
  if todo:
    logging.info('Creating %d cut files in %s (%d already cached)', len(todo),
                 folder, summary.reused)
    for index, value in bottlenecks.compute(
        entries, todo, lambda: fine_tuning.bottom_module(cut, module),
        summary):
      values[index] = write_cut(entries[index].cache_path, value)
      have[index] = True
      summary.created += 1
  logging.info('Cuts: %d created (%d replacing bad cache files), %d reused, '
               '%d failed', summary.created, summary.recomputed,
               summary.reused, len(summary.failed))
  return bottlenecks.by_split(entries, values, have), summary
