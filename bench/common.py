"""What the benchmarks share: flags, the sample photos, the module, children.

Every script measures its contenders side by side in one run and prints
ratios, because other work may share the cores: absolute figures move with
the load, ratios much less. The load average is printed beside them.
"""

import json
import os
import subprocess
import sys
import time

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
# Progress bars would bury the figures.
os.environ.setdefault('TQDM_DISABLE', '1')

from absl import flags  # noqa: E402
from absl import logging  # noqa: E402
import tensorflow as tf  # noqa: E402

from poets.core import image_listing  # noqa: E402
from poets.core import modules  # noqa: E402
from poets.core.networks import efficientnet_lite  # noqa: E402

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SAMPLE_DIR = os.path.join(REPO_ROOT, '..', 'shared', 'data',
                          'flower_photos_sample')
ARCHITECTURE = 'efficientnet_lite0'

flags.DEFINE_bool('quick', False, 'Tiny counts, to check the benchmark runs '
                  '(CI); the figures mean little.')
flags.DEFINE_string('image_dir', SAMPLE_DIR,
                    'Folder of class sub-folders of real photos.')
flags.DEFINE_integer('per_class', None,
                     'Photos per class (default all; --quick: 8).')
flags.DEFINE_string('model_dir', os.path.join(REPO_ROOT, 'tf_files', 'models'),
                    'Where the default module is built (once) and found.')
FLAGS = flags.FLAGS


def start():
  """Quiets logs; exits if there are no photos to measure on.

  Without real photos there is nothing honest to measure: synthetic images
  would decode at another speed and teach the layer nothing, so the
  benchmarks stop instead: quietly in --quick (CI on a machine without
  shared/), with an error otherwise.
  """
  logging.set_verbosity(logging.WARNING)
  tf.get_logger().setLevel('ERROR')
  if os.path.isdir(FLAGS.image_dir):
    return
  print(f'No photos at {FLAGS.image_dir}; pass --image_dir a folder of class '
        'sub-folders. Nothing measured.')
  sys.exit(0 if FLAGS.quick else 1)


def by_mode(value, quick, full):
  """A flag's value if given, else its default for --quick or a full run."""
  if value is not None:
    return value
  return quick if FLAGS.quick else full


def photos(work):
  """The photo folder, or with --per_class (--quick: 8) a subset in `work`."""
  per_class = by_mode(FLAGS.per_class, 8, None)
  if per_class is None:
    return FLAGS.image_dir
  return subset(FLAGS.image_dir, per_class, os.path.join(work, 'photos'))


def subset(image_dir, per_class, destination):
  """A folder of symlinks to the first `per_class` photos of each class."""
  for name in sorted(os.listdir(image_dir)):
    source = os.path.join(image_dir, name)
    if name.startswith('.') or not os.path.isdir(source):
      continue
    os.makedirs(os.path.join(destination, name))
    for photo in sorted(os.listdir(source))[:per_class]:
      os.symlink(os.path.abspath(os.path.join(source, photo)),
                 os.path.join(destination, name, photo))
  return destination


def photo_count(image_dir):
  """How many photos retrain.py would use from `image_dir`."""
  image_lists = image_listing.create_image_lists(image_dir, 10, 10)
  return sum(
      len(c.split(split))
      for c in image_lists.classes
      for split in image_listing.SPLITS)


def module_spec():
  """The default module, built into --model_dir if not there yet."""
  efficientnet_lite.ensure_module(ARCHITECTURE, FLAGS.model_dir)
  return modules.resolve_module(ARCHITECTURE, '', FLAGS.model_dir)


def run_child(command, log_path, env=None):
  """Runs `command` (in `env`, else this process's environment) with output
  to `log_path`; returns (seconds, peak MiB, rc).

  os.wait4 gives this child's own peak resident memory, where
  RUSAGE_CHILDREN would give the largest of all children so far.
  """
  start = time.perf_counter()
  with open(log_path, 'w') as log:
    child = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT,
                             cwd=REPO_ROOT, env=env)
  _, status, usage = os.wait4(child.pid, 0)
  child.returncode = os.waitstatus_to_exitcode(status)  # reaped: no 2nd wait
  return (time.perf_counter() - start, usage.ru_maxrss / 1024,
          child.returncode)


def timed(run):
  """Wall and CPU (all threads) seconds of run()."""
  wall, cpu = time.perf_counter(), time.process_time()
  run()
  return time.perf_counter() - wall, time.process_time() - cpu


def load():
  """The 1-minute load average, to read the figures beside."""
  return f'load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores'


# retrain.py's own flags and pipeline.run, in a child process, with the
# pipeline's RunResult written out: stage times come from the pipeline, not
# from log wording.
_RETRAIN_CHILD = """
import json, sys, threading, time
started = time.perf_counter()

def sample_memory(at_peak):
  # The resident memory's make-up when it was largest: file-backed pages
  # (a mapped file's, which the kernel may drop and read again) against
  # anonymous ones (which it may not, without swap).
  while True:
    fields = {}
    try:
      with open('/proc/self/status') as status:
        for line in status:
          key, _, value = line.partition(':')
          if key in ('VmRSS', 'RssAnon', 'RssFile', 'RssShmem'):
            fields[key] = int(value.split()[0]) / 1024
    except OSError:
      return
    if fields.get('VmRSS', 0) > at_peak.get('VmRSS', 0):
      at_peak.update(fields)
    time.sleep(0.05)

at_peak = {}
threading.Thread(target=sample_memory, args=(at_peak,), daemon=True).start()

def own_peak_mib():
  # This process's own high-water mark: os.wait4's ru_maxrss starts from
  # the parent's at the fork, which hides the child's when the parent is
  # larger (a benchmark that trained in-process first).
  try:
    with open('/proc/self/status') as status:
      for line in status:
        if line.startswith('VmHWM:'):
          return int(line.split()[1]) / 1024
  except OSError:
    return None

from absl import flags
import retrain
from poets import pipeline
flags.FLAGS(['retrain.py'] + sys.argv[2:])
imported = time.perf_counter()
result = pipeline.run(retrain.settings_from_flags())
test = result.training.test
with open(sys.argv[1], 'w') as f:
  json.dump({'start-up': imported - started,
             'listing': result.listing_seconds,
             'cache read': result.cache.read_seconds,
             'bottlenecks': result.bottleneck_seconds,
             'training': result.training_seconds,
             'export': result.export_seconds,
             'pipeline': time.perf_counter() - imported,
             'created': result.cache.created, 'reused': result.cache.reused,
             'indexed': result.cache.indexed,
             'accuracy': test and test.accuracy,
             'test_images': test and test.count,
             'own_peak_mib': own_peak_mib(), 'at_peak_mib': at_peak}, f)
"""


def retrain_in_child(flag_args, work, name):
  """retrain.py with `flag_args` in a fresh child; outputs go under `work`.

  Returns (wall seconds, peak MiB, the RunResult's figures as a dict); exits
  with the child's log if it fails.
  """
  out = os.path.join(work, name)
  report = os.path.join(work, f'{name}.json')
  log_path = os.path.join(work, f'{name}.log')
  command = [
      sys.executable, '-c', _RETRAIN_CHILD, report, *flag_args,
      '--summaries_dir', os.path.join(out, 'summaries'),
      '--output_graph', os.path.join(out, 'retrained_graph.pb'),
      '--output_labels', os.path.join(out, 'retrained_labels.txt'),
      '--checkpoint_path', os.path.join(out, 'checkpoint', 'retrain'),
      '--intermediate_output_graphs_dir', os.path.join(out, 'intermediate')]
  seconds, peak, code = run_child(command, log_path)
  if code:
    with open(log_path) as f:
      sys.exit(f'retrain failed ({code}):\n{f.read()[-3000:]}')
  with open(report) as f:
    return seconds, peak, json.load(f)
