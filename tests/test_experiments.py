"""Tests for experiments.py and poets/extras/experiment_runs.py: sweeps and their runs."""

import csv
import glob
import os
import pickle
import re
import signal
import subprocess
import sys
import time

from absl import flags
from PIL import Image
import pytest

from conftest import make_image_dir
from test_experiment_reports import FLAG_NAMES, fake_outcome
from poets import cli
from poets import interrupts
from poets import settings
from poets.core import image_listing
from poets.errors import PoetsError
from poets.extras import experiment_plan
from poets.extras import experiment_reports
from poets.extras import experiment_runs
import experiments as experiments_script

FLAGS = flags.FLAGS
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_everything_the_child_prints_goes_to_its_log(tmp_path, monkeypatch,
                                                     capfd):
  """TensorFlow's C++ start-up lines are written to fd 2 before any logging
  is set up; a child that does the same must not reach the terminal."""
  monkeypatch.setattr(
      experiment_runs, '_CHILD_CODE',
      ('import os, sys; os.write(2, b"E0000 cuda_dsoloader.cc] no cuda\\n"); '
       'print("on stdout"); sys.exit(3)'))
  run = experiment_plan.Run({'learning_rate': '0.1'},
                            settings.RetrainSettings(), str(tmp_path / 'run'))
  [outcome] = experiment_runs.run_all([run])
  assert outcome.status == 'failed'
  assert outcome.message == 'exited with status 3'
  log = (tmp_path / 'run' / experiment_plan.LOG_NAME).read_text()
  assert 'no cuda' in log and 'on stdout' in log
  terminal = capfd.readouterr()
  assert 'no cuda' not in terminal.out + terminal.err
  assert str(tmp_path / 'run' / experiment_plan.LOG_NAME) in terminal.out


def test_bad_sweep_value_is_one_line_error(tmp_path, capsys):
  """experiments.py's own main, in-process: its flags parsed as on the
  command line, the error it exits with, no run started."""
  from absl import flags
  from poets import cli
  import experiments as experiments_script
  flags.FLAGS.unparse_flags()
  try:
    with pytest.raises(SystemExit) as exit_info:
      cli.parse_flags_or_exit([
          'experiments.py', f'--experiments_dir={tmp_path / "e"}',
          f'--summaries_dir={tmp_path / "s"}',
          '--sweep', 'train_batch_size=10,0.5'])
      experiments_script.main(['experiments.py'])
  finally:
    flags.FLAGS.unparse_flags()
  error = exit_info.value.code
  assert isinstance(error, str) and error.startswith('ERROR: ')
  assert '\n' not in error and 'train_batch_size=0.5' in error
  assert capsys.readouterr().out == ''
  assert not (tmp_path / 'e').exists()


def test_an_unknown_architecture_is_refused_before_any_run(tmp_path):
  """Checked with the flags, like every other swept value: one ERROR line
  before anything is written, not a failed run per typo later."""
  FLAGS.unparse_flags()
  try:
    with pytest.raises(SystemExit) as exit_info:
      cli.parse_flags_or_exit([
          'experiments.py', f'--experiments_dir={tmp_path / "e"}',
          f'--summaries_dir={tmp_path / "s"}',
          '--sweep', 'architecture=efficientnet_lite0,MobileNet_0.25_224,'
          'mobilenet_0.25_244'])
      experiments_script.main(['experiments.py'])
  finally:
    FLAGS.unparse_flags()
  error = exit_info.value.code
  assert error.startswith('ERROR: --sweep: flag '
                          '--architecture=mobilenet_0.25_244: must be one of '
                          'efficientnet_lite0, ')
  assert '\n' not in error and 'inception_v3' in error
  assert not (tmp_path / 'e').exists() and not (tmp_path / 's').exists()


@pytest.mark.parametrize('flag, message', [
    ('--image_dir={tmp}/nowhere', "Image directory '{tmp}/nowhere' not found"),
    ('--image_dir={tmp}/one_class', 'needs at least 2 class folders'),
    ('--tfhub_module={tmp}/no_module', "Module directory '{tmp}/no_module'"),
    ('--bottleneck_dir={tmp}/one_class/red/red_000.jpg', 'Cannot write to'),
])
def test_inputs_are_checked_before_the_first_run(tmp_path, tf2_module, flag,
                                                 message):
  """As retrain.py checks them: one ERROR line, no run started, no folder of
  failed runs left behind."""
  make_image_dir(tmp_path / 'photos')
  make_image_dir(tmp_path / 'one_class', colours={'red': (200, 0, 0)})
  FLAGS.unparse_flags()
  try:
    with pytest.raises(SystemExit) as exit_info:
      cli.parse_flags_or_exit([
          'experiments.py', f'--image_dir={tmp_path / "photos"}',
          f'--tfhub_module={tf2_module}',
          f'--bottleneck_dir={tmp_path / "bottlenecks"}',
          f'--experiments_dir={tmp_path / "e"}',
          f'--summaries_dir={tmp_path / "s"}', flag.format(tmp=tmp_path),
          '--sweep', 'learning_rate=0.01,1.0'])
      experiments_script.main(['experiments.py'])
  finally:
    FLAGS.unparse_flags()
  error = exit_info.value.code
  assert error.startswith('ERROR: ') and '\n' not in error
  assert message.format(tmp=tmp_path) in error
  assert not (tmp_path / 'e').exists() and not (tmp_path / 's').exists()


def test_without_a_gpu_device_sweep_says_so_once(tmp_path, monkeypatch):
  monkeypatch.setattr(experiment_plan, 'gpu_available', lambda: False)
  sweeps = [
      experiment_plan.parse_sweep('learning_rate=0.1,1', FLAG_NAMES),
      experiment_plan.parse_sweep('device=cpu,gpu', FLAG_NAMES)
  ]
  experiment = experiment_plan.plan(
      sweeps, lambda overrides: settings.RetrainSettings(),
      str(tmp_path / 'out'), str(tmp_path / 'summaries'))
  assert [run.name for run in experiment.runs] == [
      'learning_rate=0.1,device=cpu', 'learning_rate=1,device=cpu']
  assert experiment.notes == [experiment_plan.NO_GPU_NOTE]
  outcomes = [fake_outcome(run, 0.9) for run in experiment.runs]
  experiment_reports.write_report(outcomes, experiment)
  page = (tmp_path / 'out' / experiment.name / 'results.md').read_text()
  assert page.count('No GPU') == 1
  with pytest.raises(PoetsError, match='sees no GPU'):
    experiment_plan.plan(
        [experiment_plan.parse_sweep('device=gpu', FLAG_NAMES)],
        lambda overrides: None, str(tmp_path / 'out'),
        str(tmp_path / 'summaries'))


def test_limit_training_images_is_seeded_nested_and_keeps_other_splits(
    tmp_path):
  image_lists = image_listing.create_image_lists(
      make_image_dir(tmp_path / 'photos', per_class=30), 10, 10)
  five = image_listing.limit_training_images(image_lists, 5, seed=None)
  ten = image_listing.limit_training_images(image_lists, 10, seed=None)
  assert five == image_listing.limit_training_images(image_lists, 5, seed=0)
  assert five != image_listing.limit_training_images(image_lists, 5, seed=1)
  for full, small, large in zip(image_lists.classes, five.classes,
                                ten.classes):
    assert len(small.training) == 5 and len(large.training) == 10
    assert set(small.training) <= set(large.training) <= set(full.training)
    assert (small.testing, small.validation) == (full.testing,
                                                 full.validation)


def test_plan_names_runs_and_gives_each_its_own_outputs(tmp_path):
  sweeps = [
      experiment_plan.parse_sweep('learning_rate=0.01,1.0', FLAG_NAMES),
      experiment_plan.parse_sweep('architecture=efficientnet_lite0', FLAG_NAMES)
  ]
  seen = []

  def make_config(overrides):
    seen.append(overrides)
    return settings.RetrainSettings(architecture=overrides['architecture'],
                                    output_tflite='tf_files/model.tflite')

  experiment = experiment_plan.plan(sweeps, make_config, str(tmp_path / 'out'),
                                    str(tmp_path / 'summaries'))
  assert seen == [{'learning_rate': '0.01',
                   'architecture': 'efficientnet_lite0'},
                  {'learning_rate': '1.0',
                   'architecture': 'efficientnet_lite0'}]
  assert re.fullmatch(r'\d{4}-\d\d-\d\d_\d{6}_learning_rate\+architecture',
                      experiment.name)
  out = tmp_path / 'out' / experiment.name
  name = 'learning_rate=0.01,architecture=efficientnet_lite0'
  run = experiment.runs[0]
  assert run.name == name
  assert run.config.output_graph == str(out / name / 'retrained_graph.pb')
  assert run.config.summaries_dir == str(
      tmp_path / 'summaries' / experiment.name / name)
  assert run.config.checkpoint_path.startswith(str(out / name))
  assert run.config.output_tflite == str(out / name / 'model.tflite')
  assert run.images_per_class is None
  # Listed before it runs; a killed experiment stays listed as unfinished.
  assert '2 planned, not finished' in (tmp_path / 'out' /
                                       'index.md').read_text()


@pytest.mark.parametrize('text, message', [
    ('learning_rate', 'expected key=value1'),
    ('learning_rate=0.1,', 'expected key=value1'),
    ('colour=red,blue', "cannot sweep 'colour'"),
    ('output_graph=a.pb,b.pb', "cannot sweep 'output_graph'"),
    ('learning_rate=0.1,0.1', 'a value repeats'),
    ('images_per_class=5,-1', "'-1' is neither"),
    ('device=cpu,tpu', 'not tpu'),
])
def test_bad_sweeps_are_user_errors(text, message):
  with pytest.raises(PoetsError, match=message):
    experiment_plan.parse_sweep(text, FLAG_NAMES)


def test_a_key_swept_twice_is_a_user_error(tmp_path):
  sweep = experiment_plan.parse_sweep('learning_rate=0.1,1', FLAG_NAMES)
  with pytest.raises(PoetsError, match='given twice'):
    experiment_plan.plan([sweep, sweep], lambda overrides: None,
                         str(tmp_path / 'out'), str(tmp_path / 'summaries'))


def _wait_for_log(pattern, text, process, timeout=240):
  """Waits until a log matching the glob `pattern` holds `text`; its path."""
  deadline = time.time() + timeout
  while time.time() < deadline and process.poll() is None:
    for path in glob.glob(pattern):
      with open(path, errors='replace') as f:
        if text in f.read():
          return path
    time.sleep(0.05)
  return None


def _runs_under(scratch):
  """The process ids of runs whose job lies under `scratch` (each run is in
  a session of its own, which killing the sweep does not reach)."""
  pids = []
  for pid in filter(str.isdigit, os.listdir('/proc')):
    try:
      with open(f'/proc/{pid}/cmdline', 'rb') as f:
        if os.fsencode(str(scratch)) in f.read():
          pids.append(int(pid))
    except OSError:
      pass
  return pids


def _stop_runs_under(scratch):
  for pid in _runs_under(scratch):
    try:
      os.kill(pid, signal.SIGKILL)
    except OSError:
      pass


@pytest.mark.slow
@pytest.mark.parametrize('how, code, steps', [
    ('ctrl_c_twice', 130, ['100000000']),
    ('sigterm', 143, ['20', '100000000'])])
def test_a_stopped_sweep_still_writes_its_table_and_cleans_up(
    tmp_path, tf2_module, how, code, steps):
  photos = make_image_dir(tmp_path / 'photos', per_class=10)
  out, scratch = tmp_path / 'experiments', tmp_path / 'tmp'
  scratch.mkdir()
  process = subprocess.Popen(
      [sys.executable, os.path.join(ROOT, 'experiments.py'),
       f'--image_dir={photos}', f'--tfhub_module={tf2_module}',
       f'--bottleneck_dir={tmp_path / "bottlenecks"}',
       f'--model_dir={tmp_path / "models"}',
       f'--summaries_dir={tmp_path / "summaries"}',
       f'--experiments_dir={out}', '--eval_step_interval=10',
       '--sweep', 'how_many_training_steps=' + ','.join(steps)],
      env={**os.environ, 'TMPDIR': str(scratch)}, start_new_session=True,
      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
  try:
    long_log = _wait_for_log(
        str(out / '*' / 'how_many_training_steps=100000000' /
            experiment_plan.LOG_NAME), 'Step 10:', process)
    assert long_log
    if how == 'ctrl_c_twice':  # A terminal signals the whole group.
      os.killpg(process.pid, signal.SIGINT)
      time.sleep(0.05)
      os.killpg(process.pid, signal.SIGINT)
    else:  # kill, timeout and docker stop signal the sweep's process only.
      process.send_signal(signal.SIGTERM)
    try:
      output = process.communicate(timeout=120)[0]
    except subprocess.TimeoutExpired:
      with open(long_log, errors='replace') as f:
        pytest.fail(f'The sweep did not stop in 120 s; its run logged:\n'
                    f'{f.read()[-3000:]}')
    # The stopped run's process is gone with the sweep, not left training.
    assert not _runs_under(scratch)
  finally:
    if process.poll() is None:
      os.killpg(process.pid, signal.SIGKILL)
    _stop_runs_under(scratch)
  assert process.returncode == code, output
  assert 'Traceback' not in output
  assert f'Interrupted after {len(steps)} of {len(steps)} runs' in output
  with open(os.path.join(os.path.dirname(os.path.dirname(long_log)),
                         'results.csv')) as f:
    rows = list(csv.DictReader(f))
  assert [(row['how_many_training_steps'], row['status']) for row in rows] == [
      (step, 'ok') for step in steps[:-1]] + [(steps[-1], 'interrupted')]
  assert os.listdir(scratch) == []
  with open(long_log) as f:
    assert 'Interrupted at step' in f.read()


def test_a_run_that_saved_before_the_stop_is_reported_finished(
    tmp_path, monkeypatch):
  """The stop arrives after the run's child saved its outputs and its
  result: that run finished, and the table says ok."""
  experiment = experiment_plan.plan(
      [experiment_plan.parse_sweep('learning_rate=0.01', FLAG_NAMES)],
      lambda overrides: settings.RetrainSettings(), str(tmp_path / 'out'))
  (run,) = experiment.runs
  finished = fake_outcome(run, 0.9).result
  stop = interrupts.StopSignals(pass_on=True)

  class SavedThenStopped:
    """A child that wrote its result just before Ctrl-C reached the sweep."""

    def __init__(self, argv, **kwargs):
      self.job_path = argv[-1]

    def wait(self):
      with open(self.job_path + '.result', 'wb') as f:
        pickle.dump(('ok', finished), f)
      stop(signal.SIGINT, None)
      return 0

    def poll(self):
      return 0

  monkeypatch.setattr(subprocess, 'Popen', SavedThenStopped)
  (outcome,) = experiment_runs.run_all(experiment.runs, stop=stop)
  assert outcome.status == 'ok'


def test_each_run_folder_holds_its_test_pictures_as_files(tmp_path,
                                                         monkeypatch):
  """The confusion matrix and the misclassified photos open without
  TensorBoard, and the sweep's results.md links them."""
  experiment = experiment_plan.plan(
      [experiment_plan.parse_sweep('learning_rate=0.01,1.0', FLAG_NAMES)],
      lambda overrides: settings.RetrainSettings(), str(tmp_path / 'out'))
  results = iter([fake_outcome(run, accuracy).result for run, accuracy
                  in zip(experiment.runs, [0.9, 1.0])])

  class Finished:
    """A child that trained and wrote its result."""

    def __init__(self, argv, **kwargs):
      self.job_path = argv[-1]

    def wait(self):
      with open(self.job_path + '.result', 'wb') as f:
        pickle.dump(('ok', next(results)), f)
      return 0

  monkeypatch.setattr(subprocess, 'Popen', Finished)
  mistaken, perfect = experiment_runs.run_all(experiment.runs)
  folder = experiment.runs[0].dir
  assert mistaken.pictures == [os.path.join(folder, 'confusion_matrix.png'),
                               os.path.join(folder, 'misclassified.jpg')]
  # No mistakes, no picture of them.
  assert perfect.pictures == [
      os.path.join(experiment.runs[1].dir, 'confusion_matrix.png')]
  for path, kind in zip(mistaken.pictures, ['PNG', 'JPEG']):
    with Image.open(path) as picture:
      assert picture.format == kind and picture.width > 100
  assert sorted(os.listdir(folder)) == [
      'confusion_matrix.png', 'misclassified.jpg', experiment_plan.LOG_NAME]
  experiment_reports.write_report([mistaken, perfect], experiment)
  page = (tmp_path / 'out' / experiment.name / 'results.md').read_text()
  assert ('- learning_rate=0.01: [confusion_matrix.png]'
          '(learning_rate=0.01/confusion_matrix.png), [misclassified.jpg]'
          '(learning_rate=0.01/misclassified.jpg)\n') in page


def test_sweep_summaries_stay_out_of_the_codelab_tensorboard_folder(tmp_path):
  experiment = experiment_plan.plan(
      [experiment_plan.parse_sweep('learning_rate=0.01,1.0', FLAG_NAMES)],
      lambda overrides: settings.RetrainSettings(), str(tmp_path / 'out'))
  assert experiment.summaries_dir == experiment.dir
  assert [run.config.summaries_dir for run in experiment.runs] == [
      run.dir for run in experiment.runs]
