"""The --summaries_dir: where a run's TensorBoard event files go, and where
an earlier run's go when a new one starts.

A run writes event folders (`train`, `validation` and `retrained_graph`,
and the dashboards'), each marked as written by retrain.py with what it may
hold (files.OWNER_MARKER).
The original deleted --summaries_dir at every start; here the earlier run's
folders are moved, and only folders recognised as ours: a folder of the same
name holding anything else (photos, say) stops the run before any work.

Earlier runs leave the folder that the README points TensorBoard at, so it
keeps one run of each network and selects them all (TensorBoard leaves every
run unselected past 40): from tf_files/training_summaries/<module> they go to
tf_files/previous_runs/<module>/<date>; from a --summaries_dir of the user's
own, to its ~previous_runs/<date>.
"""

import datetime
import os

from absl import logging
import tensorflow as tf

from poets import files
from poets.errors import PoetsError

try:
  import fcntl
except ImportError:  # Windows: no flock, so no lock; see claim.
  fcntl = None

ROOT = os.path.join('tf_files', 'training_summaries')
PREVIOUS_RUNS_ROOT = os.path.join('tf_files', 'previous_runs')
# Inside a --summaries_dir of the user's own. "~" sorts after "train" and
# "validation" in TensorBoard's run lists, so the current run comes first.
EARLIER_RUNS = '~previous_runs'
EVENT_FOLDERS = ('train', 'validation', 'retrained_graph')
EVENT_FILES = 'events.out.tfevents.*'
# Held by every run writing into a --summaries_dir; see claim.
LOCK = '.retrain_running.lock'


def default_dir(module_name):
  return os.path.join(ROOT, module_name)


def previous_runs_dir(summaries_dir):
  """Where earlier runs of `summaries_dir` are kept."""
  root = os.path.abspath(ROOT)
  path = os.path.abspath(summaries_dir)
  if os.path.commonpath([root, path]) == root and path != root:
    return os.path.join(PREVIOUS_RUNS_ROOT, os.path.relpath(path, root))
  return os.path.join(summaries_dir, EARLIER_RUNS)


def check(summaries_dir, image_dir, run_folders):
  """Refuses, before any work, a --summaries_dir whose run folders (a dict:
  folder name -> the fnmatch patterns of what it may hold) a run would move
  but that retrain.py did not write, or one inside --image_dir (its event
  folders would become classes)."""
  images = os.path.realpath(image_dir)
  summaries = os.path.realpath(summaries_dir)
  if os.path.commonpath([images, summaries]) == images:
    raise PoetsError(f'--summaries_dir {summaries_dir} is inside --image_dir '
                     f'{image_dir}, where its folders would be read as '
                     'classes; choose a --summaries_dir outside it.')
  _check_ours(summaries_dir, run_folders)


def _check_ours(summaries_dir, run_folders):
  for name, patterns in run_folders.items():
    files.check_ours(
        os.path.join(summaries_dir, name), '--summaries_dir',
        'a run moves only its own event folders aside; choose another '
        '--summaries_dir', unmarked_patterns=patterns)


def _set_aside_earlier_run(summaries_dir, run_folders):
  """Moves an earlier run's folders (checked to be ours) into a new dated
  folder under previous_runs_dir."""
  earlier = [name for name in run_folders
             if os.path.isdir(os.path.join(summaries_dir, name))]
  if not earlier:
    return
  _check_ours(summaries_dir, {name: run_folders[name] for name in earlier})
  stamp = datetime.datetime.now().strftime('%Y%m%d-%H%M%S-%f')
  destination = os.path.join(previous_runs_dir(summaries_dir), stamp)
  os.makedirs(destination)
  for name in earlier:
    os.rename(os.path.join(summaries_dir, name),
              os.path.join(destination, name))
  logging.info('Moved the event files of an earlier run in %s to %s, so they '
               'stay out of this run\'s curves (nothing was deleted; '
               'tensorboard --logdir %s shows them).', summaries_dir,
               destination, previous_runs_dir(summaries_dir))


def _mark(summaries_dir, run_folders):
  """Makes this run's folders, each marked with what it may hold."""
  for name, patterns in run_folders.items():
    folder = os.path.join(summaries_dir, name)
    os.makedirs(folder, exist_ok=True)
    files.mark_ours(folder, patterns, 'retrain.py')


def claim(summaries_dir, run_folders):
  """Sets an earlier run's `run_folders` aside, unless a run is still
  writing them, and makes this run's; returns the lock to hold until this
  run ends.

  Every run holds a shared lock on a file in --summaries_dir while it runs;
  setting aside needs the lock alone, so the folders of a run still going
  stay where they are, and the two runs' event files sit side by side, told
  apart by their process ids (training.event_writer).
  """
  os.makedirs(summaries_dir, exist_ok=True)
  lock = open(os.path.join(summaries_dir, LOCK), 'a')
  try:
    if fcntl is None:
      _set_aside_earlier_run(summaries_dir, run_folders)
    else:
      try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        _set_aside_earlier_run(summaries_dir, run_folders)
      except BlockingIOError:
        logging.warning('Another run is writing to %s; its event files stay '
                        'there, beside this run\'s.', summaries_dir)
      fcntl.flock(lock, fcntl.LOCK_SH)
    _mark(summaries_dir, run_folders)
  except BaseException:
    lock.close()
    raise
  return lock


class TolerantWriter:
  """A FileWriter (its file named with this process's id) whose failures, a
  full disk or a lost permission, are one warning, after which it writes
  nothing more: a run's curves are worth less than the layer it trains."""

  def __init__(self, directory, graph=None, suffix=''):
    self._writer = None
    self._try(self._open, directory, graph, suffix)

  def _open(self, directory, graph, suffix):
    self._writer = tf.compat.v1.summary.FileWriter(
        directory, graph, filename_suffix=f'.{os.getpid()}{suffix}')

  def _try(self, write, *args, **kwargs):
    try:
      write(*args, **kwargs)
    except (OSError, RuntimeError, tf.errors.OpError) as e:
      line = files.environment_error(e)
      if line is None:
        raise
      self._writer = None
      logging.warning('Could not write TensorBoard summaries: %s The run '
                      'goes on without them.', line)

  def add_summary(self, *args, **kwargs):
    if self._writer:
      self._try(self._writer.add_summary, *args, **kwargs)

  def add_graph(self, *args, **kwargs):
    if self._writer:
      self._try(self._writer.add_graph, *args, **kwargs)

  def close(self):
    if self._writer:
      self._try(self._writer.close)
