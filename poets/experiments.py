"""Experiments: a grid of retrains, measured side by side.

The codelab asks learners to vary the learning rate, the training steps and
the number of images, to time CPU against GPU and to compare networks.
`experiments.py` at the top level turns `--sweep key=v1,v2,...` flags into
`Sweep`s; here they become runs (the cross product of all sweeps), each run
goes through `pipeline.run`, and the outcomes become a table and plots.

Every run is a child process of its own. Hiding the GPU for device=cpu must
happen before TensorFlow starts, which is once per process; a fresh process
also gives every run the same cold start, so times compare, hands all memory
back between runs, and turns a crash into a failed row instead of a lost
sweep. The price is a few seconds of TensorFlow start-up per run, outside the
measured stages. Runs go one after another and share one bottleneck cache, so
only the first run of each module and image set makes bottlenecks.
"""

import csv
import dataclasses
import io
import itertools
import logging as std_logging
import os
import pickle
import re
import subprocess
import sys
import tempfile
import time

from absl import flags
from absl import logging
from matplotlib.figure import Figure
import numpy as np
import tensorflow as tf
from tqdm import tqdm

from poets import files
from poets import pipeline
from poets import settings
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

# The child's entry point; sys.argv[1] is the pickled _Job.
_CHILD_CODE = ('import sys; from poets import experiments; '
               'experiments.run_child(sys.argv[1])')
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
class Outcome:
  """What became of a run: 'ok', 'unavailable', 'failed' or 'interrupted'."""
  run: Run
  status: str
  message: str = ''
  result: pipeline.RunResult | None = None
  seconds: float = 0.0  # wall clock of the child, start-up included


@dataclasses.dataclass
class Report:
  markdown: str
  files: list[str]


@dataclasses.dataclass
class _Job:
  """What a child process needs; pickled to a file it is given."""
  config: settings.RetrainSettings
  log_path: str
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
      images_per_class=images_per_class,
      summaries_dir=summaries_dir,
      checkpoint_path=inside(config.checkpoint_path))


def plan(sweeps, make_config, experiments_dir=DEFAULT_EXPERIMENTS_DIR,
         summaries_root=DEFAULT_SUMMARIES_ROOT):
  """The runs of the cross product of `sweeps`, the first sweep slowest.

  `make_config(overrides)` returns the base RetrainSettings with the retrain
  flags in `overrides` ({flag: value text}) changed, raising PoetsError for a
  value a flag does not take. All configs are made here, so a bad value stops
  the sweep before its first run.
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
  runs = []
  for combination in itertools.product(*(sweep.values for sweep in sweeps)):
    values = dict(zip(keys, combination))
    config = make_config({key: value for key, value in values.items()
                          if key not in SPECIAL_KEYS})
    name = run_name(values)
    run_dir = os.path.join(experiments_dir, name)
    config = _per_run(config, run_dir, os.path.join(summaries_root, name),
                      _images_per_class(values.get(IMAGES_PER_CLASS, 'all')))
    runs.append(Run(values, config, run_dir, values.get(DEVICE, '')))
  return runs


def gpu_available():
  return bool(tf.config.list_physical_devices('GPU'))


def run_all(runs, verbosity='info'):
  """Runs each in a child process, one after another; returns Outcomes.

  A device=gpu run where TensorFlow sees no GPU is not run but reported
  'unavailable'. After a run that Ctrl-C interrupted the sweep stops and the
  outcomes so far come back, the last one 'interrupted'.
  """
  outcomes = []
  with tempfile.TemporaryDirectory(prefix='poets-experiments-') as scratch:
    with tqdm(total=len(runs), desc='Runs', unit='run') as progress:
      for index, run in enumerate(runs):
        progress.set_postfix_str(run.name)
        if run.device == 'gpu' and not gpu_available():
          outcome = Outcome(run, 'unavailable', 'TensorFlow sees no GPU')
        else:
          outcome = _run_child(run, os.path.join(scratch, f'{index}.pickle'),
                               verbosity)
        outcomes.append(outcome)
        progress.update()
        tqdm.write(summary_line(outcome))
        if outcome.status == 'interrupted':
          break
  return outcomes


def _run_child(run, job_path, verbosity):
  with open(job_path, 'wb') as f:
    pickle.dump(_Job(run.config, run.log_path, verbosity), f)
  env = dict(os.environ)
  env['PYTHONPATH'] = os.pathsep.join(
      filter(None, [_PACKAGE_ROOT, env.get('PYTHONPATH')]))
  if run.device == 'cpu':
    env['CUDA_VISIBLE_DEVICES'] = '-1'
  start = time.perf_counter()
  child = subprocess.Popen([sys.executable, '-c', _CHILD_CODE, job_path],
                           env=env)
  interrupted = False
  try:
    returncode = child.wait()
  except KeyboardInterrupt:
    # The child got the Ctrl-C too: it saves what it trained and exits.
    interrupted = True
    returncode = child.wait()
  seconds = time.perf_counter() - start
  if not os.path.exists(job_path + '.result'):
    return Outcome(run, 'interrupted' if interrupted else 'failed',
                   f'exited with status {returncode}; see {run.log_path}',
                   seconds=seconds)
  with open(job_path + '.result', 'rb') as f:
    status, payload = pickle.load(f)
  if status != 'ok':
    return Outcome(run, status, payload, seconds=seconds)
  if interrupted or payload.training.interrupted:
    return Outcome(run, 'interrupted', 'stopped by Ctrl-C', payload, seconds)
  return Outcome(run, 'ok', '', payload, seconds)


def _log_to_file(log_path, verbosity):
  """The whole log into the run's file; only warnings to the terminal."""
  flags.FLAGS.mark_as_parsed()  # The child has no flags; absl would warn.
  logging.use_absl_handler()
  logging.set_verbosity(verbosity)
  logging.get_absl_handler().setLevel(std_logging.WARNING)
  os.makedirs(os.path.dirname(log_path) or '.', exist_ok=True)
  handler = std_logging.FileHandler(log_path, mode='w')
  handler.setFormatter(logging.PythonFormatter())
  logging.get_absl_logger().addHandler(handler)
  # TensorFlow's own deprecation notices about tf.compat.v1 are not for users.
  tf.get_logger().setLevel('ERROR')


def run_child(job_path):
  """The child side of run_all: one pipeline.run, its outcome pickled."""
  with open(job_path, 'rb') as f:
    job = pickle.load(f)
  _log_to_file(job.log_path, job.verbosity)
  try:
    outcome = ('ok', pipeline.run(job.config))
  except PoetsError as e:
    logging.error('%s', e)
    outcome = ('failed', str(e))
  except KeyboardInterrupt:
    outcome = ('interrupted', 'stopped by Ctrl-C before training')
  except Exception as e:  # pylint: disable=broad-except
    # A bug, not a setting: keep the traceback in the log, let the sweep go on.
    logging.exception('The run crashed.')
    outcome = ('failed', f'crashed ({type(e).__name__}); see {job.log_path}')
  files.atomic_write(job_path + '.result', pickle.dumps(outcome))


def _measures(outcome):
  """The numbers of a run that trained, by column name; {} otherwise."""
  result = outcome.result
  if result is None:
    return {}
  steps = result.training.steps_done
  measures = {'steps': steps,
              'bottlenecks_created': result.cache.created,
              'bottleneck_seconds': result.bottleneck_seconds,
              'training_seconds': result.training_seconds,
              'steps_per_second': steps / result.training_seconds,
              'run_seconds': outcome.seconds}
  test = result.training.test
  if test is not None:
    # Macro averages over the classes in the test set; a class never
    # predicted counts with precision 0.
    present = test.confusion.sum(axis=1) > 0
    measures.update(test_accuracy=test.accuracy,
                    precision=float(test.precision[present].mean()),
                    recall=float(test.recall[present].mean()),
                    test_images=test.count)
  return measures


# (name in the CSV and in _measures, Markdown header, Markdown format)
_COLUMNS = (
    ('test_accuracy', 'test accuracy', '{:.1%}'),
    ('precision', 'precision', '{:.3f}'),
    ('recall', 'recall', '{:.3f}'),
    ('test_images', 'test images', '{}'),
    ('steps', 'steps', '{}'),
    ('bottlenecks_created', 'bottlenecks made', '{}'),
    ('bottleneck_seconds', 'bottleneck s', '{:.1f}'),
    ('training_seconds', 'training s', '{:.1f}'),
    ('steps_per_second', 'steps/s', '{:.1f}'),
    ('run_seconds', 'run s', '{:.1f}'),
)


def _status_text(outcome):
  return f'{outcome.status}: {outcome.message}' if outcome.message else (
      outcome.status)


def summary_line(outcome):
  """One line per finished run, for the terminal."""
  measures = _measures(outcome)
  text = f'{outcome.run.name}: {_status_text(outcome)}'
  if 'test_accuracy' in measures:
    text += f', test accuracy {measures["test_accuracy"]:.1%}'
  if measures:
    text += f', training {measures["training_seconds"]:.1f} s'
  return text


def markdown_table(outcomes, keys):
  """Swept values, status and measures; numbers right-aligned."""
  header = list(keys) + ['status'] + [title for _, title, _ in _COLUMNS]
  lines = ['| ' + ' | '.join(header) + ' |',
           '|' + '---|' * (len(keys) + 1) + '---:|' * len(_COLUMNS)]
  for outcome in outcomes:
    measures = _measures(outcome)
    cells = ([outcome.run.values[key] for key in keys] +
             [_status_text(outcome)] +
             [fmt.format(measures[name]) if name in measures else ''
              for name, _, fmt in _COLUMNS])
    lines.append('| ' + ' | '.join(cell.replace('|', r'\|') for cell in cells)
                 + ' |')
  return '\n'.join(lines) + '\n'


def csv_table(outcomes, keys):
  """The same rows with unrounded numbers (accuracies as fractions)."""
  names = [name for name, _, _ in _COLUMNS]
  out = io.StringIO()
  writer = csv.writer(out)
  writer.writerow(list(keys) + ['status', 'message'] + names + ['run_dir'])
  for outcome in outcomes:
    measures = _measures(outcome)
    writer.writerow([outcome.run.values[key] for key in keys] +
                    [outcome.status, outcome.message] +
                    [measures.get(name, '') for name in names] +
                    ['' if outcome.status == 'unavailable' else
                     outcome.run.dir])
  return out.getvalue()


def _plot_curves(outcomes, path):
  """Validation accuracy against step, one line per run; False if none."""
  curves = [(outcome.run.name, outcome.result.training.validation_curve)
            for outcome in outcomes
            if outcome.result and outcome.result.training.validation_curve]
  if not curves:
    return False
  figure = Figure(figsize=(9, 5), layout='constrained')
  axes = figure.subplots()
  for name, curve in curves:
    steps, accuracy = zip(*curve)
    axes.plot(steps, 100 * np.array(accuracy), label=name)
  axes.set(xlabel='training step', ylabel='validation accuracy (%)',
           title='Validation accuracy during training')
  axes.grid(alpha=0.3)
  axes.legend(fontsize='small')
  figure.savefig(path, dpi=100)
  return True


def _plot_by_key(outcomes, keys, key, path):
  """Test accuracy and training time against one key's values.

  Values in sweep order, evenly spaced (they may be words); one line per
  combination of the other keys. Returns False when no run has a test result.
  """
  values = list(dict.fromkeys(outcome.run.values[key] for outcome in outcomes))
  others = [other for other in keys if other != key]
  lines = {}
  for outcome in outcomes:
    measures = _measures(outcome)
    if 'test_accuracy' in measures:
      label = run_name({other: outcome.run.values[other] for other in others})
      lines.setdefault(label, []).append(
          (values.index(outcome.run.values[key]), measures))
  if not lines:
    return False
  figure = Figure(figsize=(10, 4), layout='constrained')
  accuracy_axes, time_axes = figure.subplots(1, 2)
  for label, points in lines.items():
    positions = [position for position, _ in points]
    accuracy_axes.plot(positions, [100 * m['test_accuracy'] for _, m in points],
                       'o-', label=label)
    time_axes.plot(positions, [m['training_seconds'] for _, m in points], 'o-',
                   label=label)
  for axes, label in ((accuracy_axes, 'final test accuracy (%)'),
                      (time_axes, 'training time (s)')):
    axes.set_xticks(range(len(values)), values)
    axes.set(xlabel=key, ylabel=label)
    axes.grid(alpha=0.3)
  # Full scales: a test image or two of difference should look small.
  accuracy_axes.set_ylim(0, 102)
  time_axes.set_ylim(bottom=0)
  if others:
    accuracy_axes.legend(fontsize='small')
  figure.suptitle(f'Final test accuracy and training time by {key}')
  figure.savefig(path, dpi=100)
  return True


def write_report(outcomes, keys, experiments_dir=DEFAULT_EXPERIMENTS_DIR):
  """Writes results.md, results.csv and the PNG plots; returns a Report."""
  markdown = markdown_table(outcomes, keys)
  written = [os.path.join(experiments_dir, 'results.md'),
             os.path.join(experiments_dir, 'results.csv')]
  files.atomic_write(written[0], markdown)
  files.atomic_write(written[1], csv_table(outcomes, keys))
  path = os.path.join(experiments_dir, CURVES_NAME)
  if _plot_curves(outcomes, path):
    written.append(path)
  for key in keys:
    path = os.path.join(experiments_dir, f'accuracy_and_time_by_{key}.png')
    if _plot_by_key(outcomes, keys, key, path):
      written.append(path)
  return Report(markdown, written)
