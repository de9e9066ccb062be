"""Experiments: a grid of retrains, measured side by side.

The codelab asks learners to vary the learning rate, the training steps and
the number of images, to time CPU against GPU and to compare networks.
`experiments.py` at the top level turns `--sweep key=v1,v2,...` flags into
`Sweep`s; here they become an `Experiment`: runs (the cross product of all
sweeps) in a folder of their own, each run going through `pipeline.run`, and
the outcomes become a table and plots in that folder. An index beside the
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
import csv
import dataclasses
import datetime
import io
import itertools
import json
import math
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
from matplotlib.figure import Figure
from matplotlib.patches import Patch
import numpy as np
import tensorflow as tf
from tqdm import tqdm

from poets import files
from poets import interrupts
from poets import pipeline
from poets import settings
from poets import startup
from poets.errors import PoetsError

DEFAULT_EXPERIMENTS_DIR = os.path.join('tf_files', 'experiments')
DEFAULT_SUMMARIES_ROOT = os.path.join('tf_files', 'training_summaries',
                                      'experiments')

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
CURVES_NAME = 'validation_accuracy.png'
TABLE_NAME = 'results.md'
CSV_NAME = 'results.csv'
MANIFEST_NAME = 'experiment.json'
INDEX_NAME = 'index.md'
# A failed run's table cell; the whole message stays in its log and the CSV.
REASON_LENGTH = 60

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
# A warning line of absl's Python log format, as the child writes them.


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
  summaries_dir: str  # <summaries_root>/<name>: one folder per run
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
class Report:
  markdown: str  # the table
  files: list[str]


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
         summaries_root=DEFAULT_SUMMARIES_ROOT, command=''):
  """The Experiment of the cross product of `sweeps`, the first slowest.

  `make_config(overrides)` returns the base RetrainSettings with the retrain
  flags in `overrides` ({flag: value text}) changed, raising PoetsError for a
  value a flag does not take. All configs are made before the experiment's
  folder, so a bad value stops the command before it writes anything.
  `command` is the command line, kept with the results.
  """
  if not sweeps:
    raise PoetsError('Pass at least one --sweep key=value1,value2,... (e.g. '
                     '--sweep learning_rate=0.005,0.01,0.5,1.0).')
  keys = [sweep.key for sweep in sweeps]
  for key in keys:
    if keys.count(key) > 1:
      raise PoetsError(f'--sweep {key} is given twice; list all its values '
                       'in one.')
  files.check_writable(experiments_dir, '--experiments_dir')
  files.check_writable(summaries_root, '--summaries_dir')
  sweeps, notes = _without_missing_gpu(sweeps)
  grid = []
  for combination in itertools.product(*(sweep.values for sweep in sweeps)):
    values = dict(zip(keys, combination))
    grid.append((values, make_config({key: value for key, value
                                      in values.items()
                                      if key not in SPECIAL_KEYS})))
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
  _write_manifest(experiment, None)
  write_index(experiments_dir)
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
        tqdm.write(summary_line(outcome))
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
    return Outcome(run, status, payload, seconds=seconds, warnings=warnings)
  if interrupted or payload.training.interrupted:
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


def wilson_interval(correct, count, z=1.96):
  """The 95% Wilson score interval of `correct` out of `count`, as fractions.

  On 58 test images one image is 1.7 points, and the interval is about
  +-8 points: two runs whose intervals overlap are not told apart by the
  test set. Wilson's interval, unlike p +- z*sqrt(p(1-p)/n), stays inside
  [0, 1] and is not zero wide at 100%.
  """
  share = correct / count
  scale = 1 + z * z / count
  centre = (share + z * z / (2 * count)) / scale
  half = z / scale * math.sqrt(share * (1 - share) / count +
                               z * z / (4 * count * count))
  return max(0.0, centre - half), min(1.0, centre + half)


def _measures(outcome):
  """The numbers of a run that trained, by name; {} otherwise."""
  result = outcome.result
  if result is None:
    return {}
  steps = result.training.steps_done
  measures = {'steps': steps,
              'training_images': result.split_sizes['training'],
              'validation_images': result.split_sizes['validation'],
              'bottlenecks_created': result.cache.created,
              'bottleneck_seconds': result.bottleneck_seconds,
              'training_seconds': result.training_seconds,
              'other_seconds': max(0.0, outcome.seconds -
                                   result.bottleneck_seconds -
                                   result.training_seconds),
              'steps_per_second': steps / result.training_seconds,
              'run_seconds': outcome.seconds}
  test = result.training.test
  if test is not None:
    # Macro averages over the classes in the test set; a class never
    # predicted counts with precision 0.
    present = test.confusion.sum(axis=1) > 0
    low, high = wilson_interval(int(np.trace(test.confusion)), test.count)
    measures.update(test_accuracy=test.accuracy, accuracy_low=low,
                    accuracy_high=high,
                    precision=float(test.precision[present].mean()),
                    recall=float(test.recall[present].mean()),
                    test_images=test.count)
  return measures


# Markdown header and cell (from the measures); a cell whose measure is
# missing stays empty. The CSV has every measure, unrounded.
_TABLE = (
    ('test accuracy', '{test_accuracy:.1%}'),
    ('95% interval', '{accuracy_low:.0%}–{accuracy_high:.0%}'),
    ('precision', '{precision:.3f}'),
    ('recall', '{recall:.3f}'),
    ('training images', '{training_images}'),
    ('test images', '{test_images}'),
    ('steps', '{steps}'),
    ('bottlenecks made', '{bottlenecks_created}'),
    ('bottleneck s', '{bottleneck_seconds:.1f}'),
    ('training s', '{training_seconds:.1f}'),
    ('run s', '{run_seconds:.1f}'),
)
_CSV_MEASURES = ('test_accuracy', 'accuracy_low', 'accuracy_high',
                 'precision', 'recall', 'training_images',
                 'validation_images', 'test_images', 'steps',
                 'bottlenecks_created', 'bottleneck_seconds',
                 'training_seconds', 'other_seconds', 'steps_per_second',
                 'run_seconds')


def short_reason(message, length=REASON_LENGTH):
  """A message's first line, at most `length` characters, for a table cell."""
  lines = [line for line in message.splitlines() if line.strip()]
  text = ' '.join(lines[0].split()) if lines else ''
  return text if len(text) <= length else text[:length - 1] + '…'


def _status_cell(outcome):
  return (f'{outcome.status}: {short_reason(outcome.message)}'
          if outcome.message else outcome.status)


def summary_line(outcome):
  """One line per finished run, for the terminal."""
  measures = _measures(outcome)
  text = f'{outcome.run.name}: {outcome.status}'
  if outcome.message:
    text += f': {outcome.message}'
  if 'test_accuracy' in measures:
    text += f', test accuracy {measures["test_accuracy"]:.1%}'
  if measures:
    text += f', run {measures["run_seconds"]:.1f} s'
  if outcome.warnings:
    text += (f' ({outcome.warnings} warning' +
             ('s' if outcome.warnings != 1 else '') + ')')
  if outcome.status != 'ok' or outcome.warnings:
    text += f'; see {outcome.run.log_path}'
  return text


def _cell(template, measures):
  try:
    return template.format(**measures)
  except KeyError:
    return ''


def markdown_table(outcomes, keys):
  """Swept values, status and measures; numbers right-aligned."""
  header = list(keys) + ['status'] + [title for title, _ in _TABLE]
  lines = ['| ' + ' | '.join(header) + ' |',
           '|' + '---|' * (len(keys) + 1) + '---:|' * len(_TABLE)]
  for outcome in outcomes:
    measures = _measures(outcome)
    cells = ([outcome.run.values[key] for key in keys] +
             [_status_cell(outcome)] +
             [_cell(template, measures) for _, template in _TABLE])
    lines.append('| ' + ' | '.join(cell.replace('|', r'\|') for cell in cells)
                 + ' |')
  return '\n'.join(lines) + '\n'


def csv_table(outcomes, keys):
  """The same rows with unrounded numbers (accuracies as fractions)."""
  out = io.StringIO()
  writer = csv.writer(out)
  writer.writerow(list(keys) + ['status', 'message'] + list(_CSV_MEASURES) +
                  ['run_dir'])
  for outcome in outcomes:
    measures = _measures(outcome)
    writer.writerow([outcome.run.values[key] for key in keys] +
                    [outcome.status, outcome.message] +
                    [measures.get(name, '') for name in _CSV_MEASURES] +
                    [outcome.run.dir])
  return out.getvalue()


def curves_figure(outcomes):
  """Validation accuracy against step, one line per run; None if none."""
  curves = [(outcome.run.name, outcome.result.training.validation_curve)
            for outcome in outcomes
            if outcome.result and outcome.result.training.validation_curve]
  if not curves:
    return None
  figure = Figure(figsize=(9, 4.5), layout='constrained')
  axes = figure.subplots()
  for name, curve in curves:
    steps, accuracy = zip(*curve)
    axes.plot(steps, 100 * np.array(accuracy), label=name)
  axes.set(xlabel='training step', ylabel='validation accuracy (%)',
           title='Validation accuracy during training')
  axes.margins(y=0.08)
  axes.grid(alpha=0.3)
  axes.legend(fontsize='small')
  return figure


# The parts of a run's time, bottom to top of its bar.
_TIME_PARTS = (('bottleneck_seconds', 'making bottlenecks', 'tab:orange'),
               ('training_seconds', 'training', 'tab:green'),
               ('other_seconds', 'start-up, loading, export', 'lightgrey'))
# Colours of the runs that share the other keys' values: none of the above.
_LINE_COLOURS = ('tab:blue', 'tab:purple', 'tab:brown', 'tab:pink',
                 'tab:olive', 'tab:cyan', 'tab:red', 'tab:gray')


def _mark_missing(axes, x, y, label):
  """An X and what became of the run, where its point or bar would be."""
  axes.plot([x], [y], 'x', color='tab:red', markersize=11, markeredgewidth=2.5)
  axes.annotate(label, (x, y), textcoords='offset points', xytext=(0, 9),
                ha='center', color='tab:red', fontsize='small')


def _missing_label(outcome):
  return outcome.status if outcome.status != 'ok' else 'no test images'


def _plot_accuracy(axes, placed):
  """Test accuracy with its 95% interval; an X for a run without one."""
  series, missing = {}, []
  for x, outcome, colour, label in placed:
    measures = _measures(outcome)
    if 'test_accuracy' in measures:
      series.setdefault((label, colour), []).append((x, measures))
    else:
      missing.append((x, _missing_label(outcome)))
  limits = []
  for (label, colour), points in series.items():
    accuracy = np.array([100 * m['test_accuracy'] for _, m in points])
    low = np.array([100 * m['accuracy_low'] for _, m in points])
    high = np.array([100 * m['accuracy_high'] for _, m in points])
    # Clipped: TensorFlow's float32 accuracy may sit a hair outside.
    errors = np.maximum(0, [accuracy - low, high - accuracy])
    # Points without lines: runs are not a trend to read between them.
    axes.errorbar([x for x, _ in points], accuracy, yerr=errors, fmt='o',
                  color=colour, capsize=5, markersize=7, label=label or None)
    limits.extend(low.tolist() + high.tolist())
  # Fitted to the intervals, with room above 100% and below for the Xs.
  bottom, top = (min(limits), max(limits)) if limits else (0, 100)
  span = max(top - bottom, 10)
  floor, ceiling = bottom - (0.3 if missing else 0.08) * span, top + 0.08 * span
  axes.set_ylim(floor, ceiling)
  if missing:
    # A strip of its own without ticks, so an X is not read as an accuracy.
    strip = bottom - 0.1 * span
    axes.axhspan(floor, strip, color='0.93', zorder=0)
    axes.set_yticks([tick for tick in axes.get_yticks()
                     if strip <= tick <= ceiling])
    axes.set_ylim(floor, ceiling)
  for x, label in missing:
    _mark_missing(axes, x, bottom - 0.22 * span, label)
  counts = {_measures(o).get('test_images') for _, o, _, _ in placed} - {None}
  counted = (f'{counts.pop()} test images' if len(counts) == 1
             else 'test images in the table')
  axes.set(ylabel='final test accuracy (%)',
           title=f'Test accuracy, 95% interval ({counted})')
  if series and any(label for label, _ in series):
    axes.legend(fontsize='small')


def _plot_time(axes, placed, width, outlined):
  """Each run's whole time as a bar stacked from its parts; X if none."""
  totals = [_measures(o)['run_seconds'] for _, o, _, _ in placed
            if _measures(o)]
  tallest = max(totals + [1.0])
  series = {}
  for x, outcome, colour, label in placed:
    measures = _measures(outcome)
    if not measures:
      _mark_missing(axes, x, 0.05 * tallest, outcome.status)
      continue
    base = 0.0
    for name, _, fill in _TIME_PARTS:
      axes.bar(x, measures[name], width * 0.9, bottom=base, color=fill)
      base += measures[name]
    if outlined:
      axes.bar(x, base, width * 0.9, fill=False, edgecolor=colour,
               linewidth=2)
      series[label] = colour
    axes.annotate(f'{base:.1f} s', (x, base), textcoords='offset points',
                  xytext=(0, 3), ha='center', fontsize='small')
  handles = [Patch(color=fill, label=part)
             for _, part, fill in reversed(_TIME_PARTS)]
  handles += [Patch(fill=False, edgecolor=colour, linewidth=2, label=label)
              for label, colour in series.items()]
  rows = math.ceil(len(handles) / 3)
  # Headroom for the totals and the legend, which sits above the bars.
  axes.set_ylim(0, (1.2 + 0.1 * rows) * tallest)
  axes.legend(handles=handles, fontsize='small', loc='upper center', ncol=3)
  axes.set(ylabel='time per run (s)', title='Run time: where it goes')


def by_key_figure(outcomes, keys, key):
  """Test accuracy (95% intervals) and run time, split, by one key.

  Values in sweep order, evenly spaced (they may be words); the runs that
  share the other keys' values are one series, side by side at each value.
  A run with no result is an X labelled with what became of it.
  """
  values = list(dict.fromkeys(outcome.run.values[key] for outcome in outcomes))
  others = [other for other in keys if other != key]
  series = {}
  for outcome in outcomes:
    label = run_name({other: outcome.run.values[other] for other in others})
    series.setdefault(label, []).append(outcome)
  width = 0.8 / len(series)
  placed = []  # (x, outcome, colour, series label)
  for index, (label, members) in enumerate(series.items()):
    colour = _LINE_COLOURS[index % len(_LINE_COLOURS)]
    offset = (index - (len(series) - 1) / 2) * width
    placed.extend((values.index(outcome.run.values[key]) + offset, outcome,
                   colour, label) for outcome in members)
  figure = Figure(figsize=(12, 4.8), layout='constrained')
  accuracy_axes, time_axes = figure.subplots(1, 2)
  _plot_accuracy(accuracy_axes, placed)
  _plot_time(time_axes, placed, width, outlined=len(series) > 1)
  for axes in (accuracy_axes, time_axes):
    axes.set_xticks(range(len(values)), values)
    axes.set_xlim(-0.6, len(values) - 0.4)
    axes.set_xlabel(key)
    axes.grid(alpha=0.3, axis='y')
  figure.suptitle(f'By {key}: test accuracy and run time')
  return figure


def _write_manifest(experiment, outcomes):
  """The experiment's summary for the index; outcomes None while it runs."""
  manifest = {'name': experiment.name, 'started': experiment.started,
              'command': experiment.command,
              'swept': {sweep.key: list(sweep.values)
                        for sweep in experiment.sweeps},
              'runs': len(experiment.runs), 'finished': outcomes is not None}
  if outcomes is not None:
    measures = [_measures(outcome) for outcome in outcomes]
    manifest['statuses'] = [outcome.status for outcome in outcomes]
    manifest['test_accuracies'] = [m['test_accuracy'] for m in measures
                                   if 'test_accuracy' in m]
  files.atomic_write(os.path.join(experiment.dir, MANIFEST_NAME),
                     json.dumps(manifest, indent=1) + '\n')


def _index_row(manifest):
  swept = '; '.join(f'{key}={",".join(values)}'
                    for key, values in manifest['swept'].items())
  if not manifest['finished']:
    runs, accuracy = f'{manifest["runs"]} planned, not finished', ''
  else:
    statuses = manifest['statuses']
    runs = ', '.join(f'{statuses.count(status)} {status}'
                     for status in dict.fromkeys(statuses))
    if len(statuses) < manifest['runs']:
      runs += f' (of {manifest["runs"]})'
    accuracies = manifest['test_accuracies']
    accuracy = (f'{min(accuracies):.1%}–{max(accuracies):.1%}'
                if accuracies else '')
  cells = [manifest['started'], swept, runs, accuracy,
           f'[{manifest["name"]}]({manifest["name"]}/{TABLE_NAME})']
  return '| ' + ' | '.join(cell.replace('|', r'\|') for cell in cells) + ' |'


def write_index(experiments_dir):
  """Rewrites <experiments_dir>/index.md: every experiment there, oldest first.

  Made from each experiment folder's manifest, so it lists them all however
  many commands ran, and one that was killed shows as not finished.
  """
  rows = []
  for name in sorted(os.listdir(experiments_dir)):
    path = os.path.join(experiments_dir, name, MANIFEST_NAME)
    if os.path.isfile(path):
      with open(path) as f:
        rows.append(_index_row(json.load(f)))
  text = ('# Experiments\n\nEvery experiments.py command run here, oldest '
          'first. Each folder holds its table (results.md, results.csv), its '
          'plots and a folder per run with the run\'s retrain.log.\n\n'
          '| started | swept | runs | test accuracy (lowest–highest) | '
          'results |\n|---|---|---|---|---|\n' + '\n'.join(rows) + '\n')
  path = os.path.join(experiments_dir, INDEX_NAME)
  files.atomic_write(path, text)
  return path


def _results_page(experiment, table, plots):
  """results.md: what was run, what was said, the table and the plots."""
  parts = [f'# {", ".join(experiment.keys)}, {experiment.started}\n']
  if experiment.command:
    parts.append(f'```\n{experiment.command}\n```\n')
  parts.extend(f'{note}\n' for note in experiment.notes)
  parts.append(table)
  parts.append('Test accuracy is on the test images counted in the table; '
               'the 95% interval (Wilson) is how far the true accuracy may '
               'lie from it. Each run\'s full log is '
               f'`<run>/{LOG_NAME}`.\n')
  parts.extend(f'![{os.path.splitext(plot)[0]}]({plot})\n' for plot in plots)
  return '\n'.join(parts)


def write_report(outcomes, experiment):
  """Writes the experiment's table, CSV, plots and manifest, and the index.

  Everything goes in the experiment's own folder; only the index beside it
  is rewritten. Returns a Report.
  """
  table = markdown_table(outcomes, experiment.keys)
  figures = {f'accuracy_and_time_by_{key}.png':
             by_key_figure(outcomes, experiment.keys, key)
             for key in experiment.keys}
  figures[CURVES_NAME] = curves_figure(outcomes)
  plots = [name for name, figure in figures.items() if figure is not None]
  for name in plots:
    figures[name].savefig(os.path.join(experiment.dir, name), dpi=100)
  files.atomic_write(os.path.join(experiment.dir, TABLE_NAME),
                     _results_page(experiment, table, plots))
  files.atomic_write(os.path.join(experiment.dir, CSV_NAME),
                     csv_table(outcomes, experiment.keys))
  _write_manifest(experiment, outcomes)
  index = write_index(os.path.dirname(experiment.dir))
  written = [os.path.join(experiment.dir, name)
             for name in [TABLE_NAME, CSV_NAME] + plots] + [index]
  return Report(table, written)
