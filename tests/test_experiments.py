"""Tests for experiments.py and poets/experiments.py: sweeps, table, plots."""

import csv
import os
import re
import subprocess
import sys

from PIL import Image
import pytest

from conftest import make_image_dir
from poets import experiments
from poets import images
from poets import settings
from poets.errors import PoetsError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FLAG_NAMES = ['learning_rate', 'how_many_training_steps', 'architecture',
              'output_graph']


def logged(run_dir, pattern):
  with open(os.path.join(run_dir, experiments.LOG_NAME)) as f:
    return re.search(pattern, f.read())


def test_learning_rate_sweep_writes_runs_table_and_plots(tmp_path,
                                                         tf2_module):
  photos = make_image_dir(tmp_path / 'photos')
  out, summaries = tmp_path / 'experiments', tmp_path / 'summaries'
  process = subprocess.run(
      [sys.executable, os.path.join(ROOT, 'experiments.py'),
       f'--image_dir={photos}', f'--tfhub_module={tf2_module}',
       f'--bottleneck_dir={tmp_path / "bottlenecks"}',
       f'--model_dir={tmp_path / "models"}', f'--summaries_dir={summaries}',
       f'--experiments_dir={out}', '--how_many_training_steps=30',
       '--eval_step_interval=10', '--random_seed=1',
       '--sweep', 'learning_rate=0.01,1.0'],
      capture_output=True, text=True, timeout=120)
  assert process.returncode == 0, process.stdout + process.stderr
  assert '| learning_rate | status | test accuracy |' in process.stdout

  with open(out / 'results.csv') as f:
    rows = list(csv.DictReader(f))
  assert [row['learning_rate'] for row in rows] == ['0.01', '1.0']
  for row in rows:
    name = f'learning_rate={row["learning_rate"]}'
    assert row['status'] == 'ok' and row['run_dir'] == str(out / name)
    assert (out / name / 'retrained_graph.pb').stat().st_size > 0
    for split in ('train', 'validation'):
      assert any(n.startswith('events.out.tfevents')
                 for n in os.listdir(summaries / name / split))
    # The table's numbers are the run's own.
    accuracy = logged(row['run_dir'],
                      r'Final test accuracy = ([\d.]+)% \(N=(\d+)\)')
    assert f'{100 * float(row["test_accuracy"]):.1f}' == accuracy.group(1)
    assert row['test_images'] == accuracy.group(2)
    assert row['steps'] == '30'
    assert 0 <= float(row['precision']) <= 1
    assert 0 <= float(row['recall']) <= 1
  # The second run found every bottleneck in the first run's cache.
  assert [row['bottlenecks_created'] for row in rows] == ['60', '0']
  assert logged(out / 'learning_rate=1.0', r'0 created .* 60 reused')

  plots = [out / experiments.CURVES_NAME,
           out / 'accuracy_and_time_by_learning_rate.png']
  for path in plots:
    with Image.open(path) as image:
      image.verify()


def test_bad_sweep_value_is_one_line_error(tmp_path):
  process = subprocess.run(
      [sys.executable, os.path.join(ROOT, 'experiments.py'),
       f'--experiments_dir={tmp_path / "e"}',
       f'--summaries_dir={tmp_path / "s"}',
       '--sweep', 'train_batch_size=10,0.5'],
      capture_output=True, text=True, timeout=120)
  assert process.returncode != 0
  output = process.stdout + process.stderr
  assert 'Traceback' not in output
  errors = [line for line in output.splitlines() if line.startswith('ERROR')]
  assert len(errors) == 1 and 'train_batch_size=0.5' in errors[0]


def test_images_per_class_keeps_test_set_and_gpu_is_unavailable(
    tmp_path, tf2_module, monkeypatch):
  monkeypatch.setattr(experiments, 'gpu_available', lambda: False)
  base = settings.RetrainSettings(
      image_dir=make_image_dir(tmp_path / 'photos'), tfhub_module=tf2_module,
      bottleneck_dir=str(tmp_path / 'bottlenecks'),
      model_dir=str(tmp_path / 'models'),
      how_many_training_steps=10, eval_step_interval=5, random_seed=2)
  sweeps = [experiments.parse_sweep('images_per_class=3,all', FLAG_NAMES),
            experiments.parse_sweep('device=cpu,gpu', FLAG_NAMES)]
  runs = experiments.plan(sweeps, lambda overrides: base,
                          str(tmp_path / 'out'), str(tmp_path / 'summaries'))
  outcomes = experiments.run_all(runs)

  assert [(o.run.name, o.status) for o in outcomes] == [
      ('images_per_class=3,device=cpu', 'ok'),
      ('images_per_class=3,device=gpu', 'unavailable'),
      ('images_per_class=all,device=cpu', 'ok'),
      ('images_per_class=all,device=gpu', 'unavailable')]
  few, _, every, _ = outcomes
  assert logged(few.run.dir, r'\(9 training,')
  assert not logged(every.run.dir, r'\(9 training,')
  few_test, every_test = few.result.training.test, every.result.training.test
  assert few_test.count == every_test.count > 0
  assert few_test.ground_truth.tolist() == every_test.ground_truth.tolist()

  report = experiments.write_report(outcomes, ['images_per_class', 'device'],
                                    str(tmp_path / 'out'))
  assert '| 3 | gpu | unavailable: TensorFlow sees no GPU |' in (
      report.markdown)


def test_limit_training_images_is_seeded_nested_and_keeps_other_splits(
    tmp_path):
  image_lists = images.create_image_lists(
      make_image_dir(tmp_path / 'photos', per_class=30), 10, 10)
  five = images.limit_training_images(image_lists, 5, seed=None)
  ten = images.limit_training_images(image_lists, 10, seed=None)
  assert five == images.limit_training_images(image_lists, 5, seed=0)
  assert five != images.limit_training_images(image_lists, 5, seed=1)
  for full, small, large in zip(image_lists.classes, five.classes,
                                ten.classes):
    assert len(small.training) == 5 and len(large.training) == 10
    assert set(small.training) <= set(large.training) <= set(full.training)
    assert (small.testing, small.validation) == (full.testing,
                                                 full.validation)


def test_plan_names_runs_and_gives_each_its_own_outputs(tmp_path):
  sweeps = [experiments.parse_sweep('learning_rate=0.01,1.0', FLAG_NAMES),
            experiments.parse_sweep('architecture=efficientnet_lite0',
                                    FLAG_NAMES)]
  seen = []

  def make_config(overrides):
    seen.append(overrides)
    return settings.RetrainSettings(architecture=overrides['architecture'])

  runs = experiments.plan(sweeps, make_config, str(tmp_path / 'out'),
                          str(tmp_path / 'summaries'))
  assert seen == [{'learning_rate': '0.01',
                   'architecture': 'efficientnet_lite0'},
                  {'learning_rate': '1.0',
                   'architecture': 'efficientnet_lite0'}]
  name = 'learning_rate=0.01,architecture=efficientnet_lite0'
  assert runs[0].name == name
  config = runs[0].config
  assert config.output_graph == str(tmp_path / 'out' / name /
                                    'retrained_graph.pb')
  assert config.summaries_dir == str(tmp_path / 'summaries' / name)
  assert config.checkpoint_path.startswith(str(tmp_path / 'out' / name))
  assert config.images_per_class is None


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
    experiments.parse_sweep(text, FLAG_NAMES)


def test_a_key_swept_twice_is_a_user_error(tmp_path):
  sweep = experiments.parse_sweep('learning_rate=0.1,1', FLAG_NAMES)
  with pytest.raises(PoetsError, match='given twice'):
    experiments.plan([sweep, sweep], lambda overrides: None,
                     str(tmp_path / 'out'), str(tmp_path / 'summaries'))
