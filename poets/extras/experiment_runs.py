"""Experiments: run each planned retrain in a child process of its own.

Hiding the GPU for device=cpu must happen before TensorFlow starts, which is
once per process; a fresh process also gives every run the same cold start,
so times compare, hands all memory back between runs, and turns a crash into
a failed row instead of a lost sweep. The price is TensorFlow's start-up per
run, which the plots show as its own share of the run time. Runs go one after
another and share one bottleneck cache, so only the first run of each module
and image set makes bottlenecks.
"""

import dataclasses
import os
import pickle
import subprocess
import sys
import tempfile
import time

from absl import flags
from absl import logging
from tqdm import tqdm

from poets import files
from poets import interrupts
from poets import pipeline
from poets import settings
from poets import startup
from poets.errors import PoetsError
from poets.extras import dashboards
from poets.extras import experiment_plan
from poets.extras import experiment_reports

# The child's entry point; sys.argv[1] is the pickled _Job. A stop that
# comes while TensorFlow is still importing ends it quietly.
_CHILD_CODE = ('import sys\n'
               'try:\n'
               '  from poets import startup\n'
               '  startup.import_tensorflow()\n'
               '  from poets.extras import experiment_runs\n'
               '  experiment_runs.run_child(sys.argv[1])\n'
               'except KeyboardInterrupt:\n'
               '  sys.exit(130)\n')
# So the child imports this very package, wherever the parent was started.
_PACKAGE_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))


@dataclasses.dataclass
class Outcome:
  """What became of a run: 'ok', 'failed' or 'interrupted'."""
  run: experiment_plan.Run
  status: str
  message: str = ''
  result: pipeline.RunResult | None = None
  seconds: float = 0.0  # wall clock of the child, start-up included
  warnings: int = 0  # warning lines in the run's log
  # The test set's confusion matrix and mistakes in the run's folder.
  pictures: list[str] = dataclasses.field(default_factory=list)


@dataclasses.dataclass
class _Job:
  """What a child process needs; pickled to a file it is given."""
  config: settings.RetrainSettings
  images_per_class: int | None
  verbosity: str


def run_all(runs, verbosity='info', stop=None):
  """Runs each in a child process, one after another; returns Outcomes.

  Once `stop` (interrupts.StopSignals(pass_on=True), which passes each
  signal on to the run in progress) has received a signal, the sweep stops
  and the outcomes so far come back, the run that was stopped
  'interrupted'.
  """
  stop = stop or interrupts.StopSignals(pass_on=True)
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
    pickle.dump(_Job(run.config, run.images_per_class, verbosity), f)
  env = dict(os.environ)
  env['PYTHONPATH'] = os.pathsep.join(
      filter(None, [_PACKAGE_ROOT, env.get('PYTHONPATH')]))
  if run.device == 'cpu':
    env['CUDA_VISIBLE_DEVICES'] = '-1'
  os.makedirs(run.dir, exist_ok=True)
  start = time.perf_counter()
  # All the child writes (less TensorFlow's start-up lines, as for the
  # scripts) is its log; the terminal keeps one line per run.
  signals_before = stop.count
  with open(run.log_path, 'wb') as log:
    child = subprocess.Popen([sys.executable, '-c', _CHILD_CODE, job_path],
                             env=env, stdin=subprocess.DEVNULL, stdout=log,
                             stderr=log, start_new_session=True)
  stop.watch(child)
  returncode = child.wait()
  stop.child = None
  interrupted = stop.count > signals_before
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
  pictures = _write_pictures(run, payload)
  # A stop that came after the run saved its outputs found it finished.
  if payload.training.interrupted:
    return Outcome(run, 'interrupted', 'stopped on request', payload,
                   seconds, warnings, pictures)
  return Outcome(run, 'ok', '', payload, seconds, warnings, pictures)


def _write_pictures(run, result):
  """The run's test pictures (dashboards.write_pictures) in its folder, so
  they open without TensorBoard; their paths, [] without a test set."""
  test = result.training.test
  if test is None:
    return []
  try:
    return dashboards.write_pictures(run.dir, test, result.labels)
  except OSError as e:
    line = files.environment_error(e)
    if line is None:
      raise
    tqdm.write(f'{run.name}: could not write its pictures: {line}')
    return []


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
      outcome = ('ok', pipeline.run(job.config, job.images_per_class))
    except PoetsError as e:
      logging.error('%s', e)
      outcome = ('failed', str(e))
    except KeyboardInterrupt:
      outcome = ('interrupted', 'stopped on request before it finished')
    except Exception as e:  # pylint: disable=broad-except
      line = files.environment_error(e)
      if line:  # A full disk, a denied permission: the machine's.
        logging.error('%s', line)
        outcome = ('failed', line)
      else:
        # A bug, not a setting: keep the traceback in the log, let the
        # sweep go on.
        logging.exception('The run crashed.')
        outcome = ('failed', f'crashed: {type(e).__name__}: {e}')
    files.atomic_write(job_path + '.result', pickle.dumps(outcome))
