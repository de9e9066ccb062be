"""Experiments: a grid of retrains, measured side by side.

The codelab asks learners to vary the learning rate, the training steps and
the number of images, to time CPU against GPU and to compare networks.
`experiments.py` at the top level turns `--sweep key=v1,v2,...` flags into
`Sweep`s; here they become an `Experiment`: runs (the cross product of all
sweeps) in a folder of their own, each run going through `pipeline.run`, and
poets.experiment_reports makes the outcomes a table and plots in that
folder. An index beside the
folders lists every experiment, so no command overwrites an earlier one's
answers.

Every run is a child process of its own. Hiding the GPU for device=cpu must
happen before TensorFlow starts, which is once per process; a fresh process
also gives every run the same cold start, so times compare, hands all memory
back between runs, and turns a crash into a failed row instead of a lost
sweep. The price is a few seconds of TensorFlow start-up per run, which the
plots show as its own share of the run time. Runs go one after another and
share one bottleneck cache, so only the first run of each module and image
set makes bottlenecks.
"""

import contextlib
import dataclasses
import datetime
import itertools
import os
import pickle
import re
import signal
import subprocess
import sys
import tempfile
import time

from absl import flags
from absl import logging
import tensorflow as tf
from tqdm import tqdm

from poets import experiment_reports
from poets import files
from poets import interrupts
from poets import pipeline
from poets import settings
from poets import startup
from poets.errors import PoetsError

DEFAULT_EXPERIMENTS_DIR = os.path.join('tf_files', 'experiments')
# Sweep keys that are not retrain flags.
IMAGES_PER_CLASS = 'images_per_class'
DEVICE = 'device'
SPECIAL_KEYS = (IMAGES_PER_CLASS, DEVICE)
DEVICES = ('cpu', 'gpu')
# Retrain flags that every run sets for itself or that change no result.
UNSWEEPABLE_FLAGS = ('output_graph', 'output_labels', 'summaries_dir',
                     'checkpoint_path', 'intermediate_output_graphs_dir',
                     'saved_model_dir', 'logging_verbosity')

LOG_NAME = 'retrain.log'

NO_GPU_NOTE = (
    'No GPU: TensorFlow sees none on this machine, so the device=gpu runs are '
    'left out. Where it sees one, each device=gpu run keeps the GPU and each '
    'device=cpu run hides it (CUDA_VISIBLE_DEVICES=-1), and the table compares '
    'their bottleneck, training and run seconds.')

# The child's entry point; sys.argv[1] is the pickled _Job. A stop that
# comes while TensorFlow is still importing ends it quietly.
_CHILD_CODE = ('import sys\n'
               'try:\n'
               '  from poets import startup\n'
               '  startup.import_tensorflow()\n'
               '  from poets import experiments\n'
               '  experiments.run_child(sys.argv[1])\n'
               'except KeyboardInterrupt:\n'
               '  sys.exit(130)\n')
# So the child imports this very package, wherever the parent was started.
_PACKAGE_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@dataclasses.dataclass(frozen=True)
class Sweep:
  """One --sweep: a key and the values to try, as typed."""
  key: str
  values: tuple[str, ...]


@dataclasses.dataclass
class Run:
  """One point of the grid and where its outputs go."""
  values: dict  # sweep key -> value as typed, in sweep order
  config: settings.RetrainSettings
  dir: str  # graph, labels, checkpoint and log of this run
  device: str = ''  # 'cpu', 'gpu' or '' for TensorFlow's choice

  @property
  def name(self):
    return run_name(self.values)

  @property
  def log_path(self):
    return os.path.join(self.dir, LOG_NAME)


@dataclasses.dataclass
class Experiment:
  """One experiments.py command: its runs and the folder they all go in.

  The folder is new for every command (named by its start and its keys), so
  a later experiment never overwrites an earlier one's table, plots or runs.
  """
  name: str  # '2026-11-24_185950_learning_rate'
  dir: str  # <experiments_dir>/<name>: table, plots, one folder per run
  summaries_dir: str  # TensorBoard's --logdir for it: one folder per run
  sweeps: list[Sweep]
  runs: list[Run]
  started: str  # 'YYYY-MM-DD HH:MM:SS'
  command: str = ''
  notes: list[str] = dataclasses.field(default_factory=list)  # said once

  @property
  def keys(self):
    return [sweep.key for sweep in self.sweeps]


@dataclasses.dataclass
class Outcome:
  """What became of a run: 'ok', 'failed' or 'interrupted'."""
  run: Run
  status: str
  message: str = ''
  result: pipeline.RunResult | None = None
  seconds: float = 0.0  # wall clock of the child, start-up included
  warnings: int = 0  # warning lines in the run's log


@dataclasses.dataclass
class _Job:
  """What a child process needs; pickled to a file it is given."""
  config: settings.RetrainSettings
  verbosity: str


def _safe(value):
  """A value as it may appear in a folder name."""
  return re.sub(r'[^\w.+-]', '~', value)


def run_name(values):
  """'learning_rate=0.01,how_many_training_steps=500': a folder per run."""
  return ','.join(f'{key}={_safe(value)}' for key, value in values.items())


def _images_per_class(text):
  """'all' -> None, a positive integer -> itself."""
  if text == 'all':
    return None
  if not text.isdigit() or int(text) < 1:
    raise PoetsError(f"--sweep {IMAGES_PER_CLASS}: '{text}' is neither a "
                     'positive whole number nor all.')
  return int(text)


def parse_sweep(text, flag_names):
  """'key=v1,v2,...' -> Sweep; `flag_names` are the retrain flags."""
  key, separator, listed = text.partition('=')
  key = key.strip()
  values = tuple(value.strip() for value in listed.split(','))
  if not separator or not key or not all(values):
    raise PoetsError(f"--sweep '{text}': expected key=value1,value2,... "
                     '(e.g. learning_rate=0.005,0.01).')
  sweepable = sorted(set(flag_names) - set(UNSWEEPABLE_FLAGS)) + list(
      SPECIAL_KEYS)
  if key not in sweepable:
    raise PoetsError(f"--sweep: cannot sweep '{key}'; sweep one of "
                     f"{', '.join(sweepable)}.")
  if len({_safe(value) for value in values}) < len(values):
    raise PoetsError(f'--sweep {key}: a value repeats.')
  if key == IMAGES_PER_CLASS:
    for value in values:
      _images_per_class(value)
  if key == DEVICE and not set(values) <= set(DEVICES):
    raise PoetsError(f"--sweep {DEVICE}: the values are {' and '.join(DEVICES)}"
                     f", not {', '.join(sorted(set(values) - set(DEVICES)))}.")
  return Sweep(key, values)


def _per_run(config, run_dir, summaries_dir, images_per_class):
  """The config with the run's own outputs, so runs overwrite nothing."""
  def inside(path):
    return os.path.join(run_dir, os.path.basename(path))

  return config.replace(
      output_graph=inside(config.output_graph),
      output_labels=inside(config.output_labels),
      intermediate_output_graphs_dir=inside(
          config.intermediate_output_graphs_dir),
      saved_model_dir=config.saved_model_dir and inside(config.saved_model_dir),
      output_tflite=config.output_tflite and inside(config.output_tflite),
      images_per_class=images_per_class,
      summaries_dir=summaries_dir,
      checkpoint_path=inside(config.checkpoint_path))


def gpu_available():
  return bool(tf.config.list_physical_devices('GPU'))


def _without_missing_gpu(sweeps):
  """The sweeps, less device=gpu where TensorFlow sees no GPU; and notes.

  Said once for the whole experiment rather than as a row per run that
  could not run.
  """
  device = next((s for s in sweeps if s.key == DEVICE), None)
  if device is None or 'gpu' not in device.values or gpu_available():
    return sweeps, []
  values = tuple(value for value in device.values if value != 'gpu')
  if not values:
    raise PoetsError(f'--sweep {DEVICE}=gpu: TensorFlow sees no GPU on this '
                     'machine; run it where it does, or add cpu.')
  return [Sweep(DEVICE, values) if s is device else s for s in sweeps], [
      NO_GPU_NOTE]


def _check_inputs(configs):
  """Each run's image folder and module, checked as a run checks them first
  (each distinct one once), so that a typo stops the command before it
  writes anything. Their log lines are left to the runs, which log them."""
  checked = set()
  for config in configs:
    inputs = (config.image_dir, config.testing_percentage,
              config.validation_percentage, config.architecture,
              config.tfhub_module, config.model_dir, config.input_size,
              config.bottleneck_dir)
    if inputs not in checked:
      with startup.warnings_only():
        pipeline.check_inputs(config)
      checked.add(inputs)


def _new_folder(parent, stem):
  """Creates and returns parent/stem (or stem_2, ...): never an old one."""
  for attempt in itertools.count(1):
    name = stem if attempt == 1 else f'{stem}_{attempt}'
    try:
      os.makedirs(os.path.join(parent, name))
      return name
    except FileExistsError:
      continue


def plan(sweeps, make_config, experiments_dir=DEFAULT_EXPERIMENTS_DIR,
         summaries_root=None, command='', check_inputs=False):
  """The Experiment of the cross product of `sweeps`, the first slowest.

  `make_config(overrides)` returns the base RetrainSettings with the retrain
  flags in `overrides` ({flag: value text}) changed, raising PoetsError for a
  value a flag does not take. All configs are made before the experiment's
  folder, so a bad value stops the command before it writes anything; with
  `check_inputs`, so does a missing image folder or module, as in
  retrain.py. `command` is the command line, kept with the results. Each
  run's summaries go to <summaries_root>/<experiment>/<run>, by default its
  own folder.
  """
  if not sweeps:
    raise PoetsError('Pass at least one --sweep key=value1,value2,... (e.g. '
                     '--sweep learning_rate=0.005,0.01,0.5,1.0).')
  keys = [sweep.key for sweep in sweeps]
  for key in keys:
    if keys.count(key) > 1:
      raise PoetsError(f'--sweep {key} is given twice; list all its values '
                       'in one.')
  summaries_root = summaries_root or experiments_dir
  files.check_writable(experiments_dir, '--experiments_dir')
  files.check_writable(summaries_root, '--summaries_dir')
  experiment_reports.check_index(experiments_dir)
  sweeps, notes = _without_missing_gpu(sweeps)
  grid = []
  for combination in itertools.product(*(sweep.values for sweep in sweeps)):
    values = dict(zip(keys, combination))
    grid.append((values, make_config({key: value for key, value
                                      in values.items()
                                      if key not in SPECIAL_KEYS})))
  if check_inputs:
    _check_inputs(config for _, config in grid)
  now = datetime.datetime.now()
  name = _new_folder(experiments_dir,
                     f'{now:%Y-%m-%d_%H%M%S}_{"+".join(keys)}')
  directory = os.path.join(experiments_dir, name)
  summaries_dir = os.path.join(summaries_root, name)
  runs = []
  for values, config in grid:
    run_dir = os.path.join(directory, run_name(values))
    config = _per_run(config, run_dir,
                      os.path.join(summaries_dir, run_name(values)),
                      _images_per_class(values.get(IMAGES_PER_CLASS, 'all')))
    runs.append(Run(values, config, run_dir, values.get(DEVICE, '')))
  experiment = Experiment(name, directory, summaries_dir, sweeps, runs,
                          f'{now:%Y-%m-%d %H:%M:%S}', command, notes)
  experiment_reports.write_manifest(experiment, None)
  experiment_reports.write_index(experiments_dir)
  return experiment


class StopRequests:
  """Ctrl-C and SIGTERM during a sweep, passed on to the run in progress.

  Each run is a child in a session of its own, so a terminal's Ctrl-C
  reaches this process only, and SIGTERM (which reaches only this process
  anyway) is handled the same way: every signal is passed on to the child,
  which finishes its step, saves what it trained and exits; the sweep then
  starts no further run and still writes the table of those that finished.
  A second Ctrl-C, passed on too, stops the child's export short; the
  table is still written and the temporary folder removed.
  """

  def __init__(self):
    self.received = []
    self.child = None

  def __call__(self, signum, frame):
    del frame  # Unused.
    self.received.append(signum)
    self._pass_on(signum)

  def _pass_on(self, signum):
    if self.child is not None and self.child.poll() is None:
      self.child.send_signal(signum)

  def watch(self, child):
    """Passes signals on to `child` from now on (and one that came while it
    was starting)."""
    self.child = child
    if self.received:
      self._pass_on(self.received[-1])

  @property
  def exit_code(self):
    return 128 + self.received[0]


@contextlib.contextmanager
def stop_requests():
  """While inside, Ctrl-C and SIGTERM become StopRequests, not exceptions:
  nothing this process does (writing the table, removing its temporary
  folder) is cut short."""
  requests = StopRequests()
  previous = {signum: signal.signal(signum, requests)
              for signum in interrupts.STOP_SIGNALS}
  try:
    yield requests
  finally:
    for signum, handler in previous.items():
      signal.signal(signum, handler)


def run_all(runs, verbosity='info', stop=None):
  """Runs each in a child process, one after another; returns Outcomes.

  Once `stop` (StopRequests; see stop_requests) has received a signal, the
  sweep stops and the outcomes so far come back, the run that was stopped
  'interrupted'.
  """
  stop = stop or StopRequests()
  outcomes = []
  with tempfile.TemporaryDirectory(prefix='poets-experiments-') as scratch:
    # In a log file the per-run lines below are the progress.
    with tqdm(total=len(runs), desc='Runs', unit='run',
              disable=not sys.stderr.isatty()) as progress:
      for index, run in enumerate(runs):
        if stop.received:
          break
        progress.set_postfix_str(run.name)
        outcome = _run_child(run, os.path.join(scratch, f'{index}.pickle'),
                             verbosity, stop)
        outcomes.append(outcome)
        progress.update()
        tqdm.write(experiment_reports.summary_line(outcome))
        if outcome.status == 'interrupted':
          break
  return outcomes


def _count_warnings(log_path):
  with open(log_path, errors='replace') as f:
    # Our warnings, not TensorFlow's start-up line that starts the same way
    # (the child filters it out unless POETS_SHOW_TF_LOGS=1).
    return sum(1 for line in f if line.startswith('WARNING: ') and
               not startup.is_start_up_line(line.rstrip('\n')))


def _run_child(run, job_path, verbosity, stop):
  with open(job_path, 'wb') as f:
    pickle.dump(_Job(run.config, verbosity), f)
  env = dict(os.environ)
  env['PYTHONPATH'] = os.pathsep.join(
      filter(None, [_PACKAGE_ROOT, env.get('PYTHONPATH')]))
  if run.device == 'cpu':
    env['CUDA_VISIBLE_DEVICES'] = '-1'
  os.makedirs(run.dir, exist_ok=True)
  start = time.perf_counter()
  # All the child writes (less TensorFlow's start-up lines, as for the
  # scripts) is its log; the terminal keeps one line per run.
  signals_before = len(stop.received)
  with open(run.log_path, 'wb') as log:
    child = subprocess.Popen([sys.executable, '-c', _CHILD_CODE, job_path],
                             env=env, stdin=subprocess.DEVNULL, stdout=log,
                             stderr=log, start_new_session=True)
  stop.watch(child)
  returncode = child.wait()
  stop.child = None
  interrupted = len(stop.received) > signals_before
  seconds = time.perf_counter() - start
  warnings = _count_warnings(run.log_path)
  if not os.path.exists(job_path + '.result'):
    return Outcome(run, 'interrupted' if interrupted else 'failed',
                   f'exited with status {returncode}', seconds=seconds,
                   warnings=warnings)
  with open(job_path + '.result', 'rb') as f:
    status, payload = pickle.load(f)
  if status != 'ok':
    # A run stopped on request is interrupted, whatever the stop broke in
    # it (a second Ctrl-C can land mid-export); the detail keeps what.
    return Outcome(run, 'interrupted' if interrupted else status, payload,
                   seconds=seconds, warnings=warnings)
  # A stop that came after the run saved its outputs found it finished.
  if payload.training.interrupted:
    return Outcome(run, 'interrupted', 'stopped on request', payload,
                   seconds, warnings)
  return Outcome(run, 'ok', '', payload, seconds, warnings)


def _log_to_stderr(verbosity):
  """Every log line to stderr, which the parent has pointed at the log."""
  flags.FLAGS.mark_as_parsed()  # The child has no flags; absl would warn.
  logging.use_absl_handler()
  logging.set_verbosity(verbosity)
  startup.plain_log_lines()


def run_child(job_path):
  """The child side of run_all: one pipeline.run, its outcome pickled."""
  with open(job_path, 'rb') as f:
    job = pickle.load(f)
  _log_to_stderr(job.verbosity)
  with interrupts.StopSignals():  # SIGTERM, passed on, acts as Ctrl-C.
    try:
      outcome = ('ok', pipeline.run(job.config))
    except PoetsError as e:
      logging.error('%s', e)
      outcome = ('failed', str(e))
    except KeyboardInterrupt:
      outcome = ('interrupted', 'stopped on request before it finished')
    except Exception as e:  # pylint: disable=broad-except
      # A bug, not a setting: keep the traceback in the log, let the sweep
      # go on.
      logging.exception('The run crashed.')
      outcome = ('failed', f'crashed: {type(e).__name__}: {e}')
    files.atomic_write(job_path + '.result', pickle.dumps(outcome))
