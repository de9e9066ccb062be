"""Tests for poets/experiment_reports.py: the table, CSV, plots and index."""

import csv
import os
import re

import numpy as np
import pytest

from poets import pipeline
from poets import settings
from poets.core import bottlenecks
from poets.core import training
from poets.errors import PoetsError
from poets.extras import experiment_plan
from poets.extras import experiment_reports
from poets.extras import experiment_runs

FLAG_NAMES = ['learning_rate', 'how_many_training_steps', 'architecture',
              'output_graph']


def fake_outcome(run, accuracy, status='ok', message='', test_images=58):
  """The Outcome of a run that did not need TensorFlow to make."""
  if status != 'ok':
    return experiment_runs.Outcome(run, status, message, seconds=4.0)
  correct = round(accuracy * test_images)
  confusion = np.array([[correct, test_images - correct], [0, 0]])
  truth = np.zeros(test_images, np.int64)
  predictions = np.repeat([0, 1], confusion[0])
  test = training.Evaluation(
      correct / test_images, test_images, predictions, truth, confusion,
      np.eye(2, dtype=np.float32)[predictions] * 0.8 + 0.1,
      [f'/photos/a/{index}.jpg' for index in range(test_images)])
  result = pipeline.RunResult(
      ['a', 'b'], bottlenecks.CacheSummary(created=100),
      {'training': 80, 'validation': 10, 'testing': test_images},
      training.TrainingResult(500, False, test, [(0, 0.5), (499, accuracy)]),
      listing_seconds=0.1, bottleneck_seconds=14.2, training_seconds=0.7,
      export_seconds=0.5)
  return experiment_runs.Outcome(run, 'ok', '', result, seconds=21.0)


def _experiment(tmp_path, sweep):
  return experiment_plan.plan([experiment_plan.parse_sweep(sweep, FLAG_NAMES)],
                          lambda overrides: settings.RetrainSettings(),
                          str(tmp_path / 'out'), str(tmp_path / 'summaries'))


def test_two_experiments_in_a_row_keep_both_tables(tmp_path):
  first = _experiment(tmp_path, 'learning_rate=0.01,1.0')
  experiment_reports.write_report(
      [fake_outcome(run, 1.0) for run in first.runs], first)
  second = _experiment(tmp_path, 'learning_rate=0.01,1.0')
  experiment_reports.write_report(
      [fake_outcome(run, 0.5) for run in second.runs], second)

  # In the same second a suffix tells them apart.
  assert first.name != second.name
  out = tmp_path / 'out'
  for experiment, accuracy in ((first, '100.0%'), (second, '50.0%')):
    folder = out / experiment.name
    assert f'| 0.01 | ok | {accuracy}' in (folder / 'results.md').read_text()
    assert (folder / 'results.csv').exists()
    assert (folder / 'accuracy_and_time_by_learning_rate.png').exists()
  index = (out / 'index.md').read_text()
  rows = [line for line in index.splitlines() if line.startswith('| 20')]
  assert len(rows) == 2
  assert f'({first.name}/results.md)' in rows[0] and '2 ok' in rows[0]
  assert f'({second.name}/results.md)' in rows[1]
  assert '50.0%–50.0%' in rows[1]


def test_a_failed_run_is_a_short_cell_and_a_marked_point(tmp_path):
  experiment = _experiment(tmp_path, 'architecture=a,b,c')
  reason = ('Image directory x|y not found. ' + 'Download it with curl. ' * 20)
  outcomes = [fake_outcome(experiment.runs[0], 0.9),
              fake_outcome(experiment.runs[1], None, 'failed', reason),
              fake_outcome(experiment.runs[2], 1.0)]
  report = experiment_reports.write_report(outcomes, experiment)

  header, _, _, failed_row, _ = report.markdown.splitlines()
  cells = [cell.strip() for cell in re.split(r'(?<!\\)\|', failed_row)]
  assert len(cells) == header.count('|') + 1  # Still one row of the table.
  assert cells[2].startswith(r'failed: Image directory x\|y not found.')
  assert len(cells[2]) <= (len('failed: ') + experiment_reports.REASON_LENGTH
                            + 1)
  with open(os.path.join(experiment.dir, 'results.csv')) as f:
    assert list(csv.DictReader(f))[1]['message'] == reason

  figure = experiment_reports.by_key_figure(outcomes, ['architecture'],
                                     'architecture')
  accuracy_axes, time_axes = figure.axes
  for axes in (accuracy_axes, time_axes):
    assert [text.get_text() for text in axes.texts].count('failed') == 1
  # A run at 100% and its interval are inside the axes, not on the edge.
  assert accuracy_axes.get_ylim()[1] > 100
  # Time is the whole run, split: the bars stack up to each run's seconds.
  assert '21.0 s' in [text.get_text() for text in time_axes.texts]


@pytest.mark.parametrize('values', [
    # The README's network sweep, and more.
    'efficientnet_lite0,mobilenet_0.25_224,efficientnet_lite2,'
    'mobilenet_1.0_224_quantized,inception_v3',
    # Long values with few places to break them: the figure widens.
    ','.join(f'/home/me/{name * 3}/feature_vector_{i}'
             for i, name in enumerate(['mobilenet', 'inception', 'resnet',
                                       'efficientnet', 'nasnet', 'pnasnet'])),
])
def test_x_tick_labels_never_run_into_each_other(tmp_path, values):
  experiment = _experiment(tmp_path, f'architecture={values}')
  figure = experiment_reports.by_key_figure(
      [fake_outcome(run, 0.9) for run in experiment.runs], ['architecture'],
      'architecture')
  figure.draw_without_rendering()
  for axes in figure.axes:
    boxes = [label.get_window_extent() for label in axes.get_xticklabels()]
    assert len(boxes) == len(experiment.runs)
    for left, right in zip(boxes, boxes[1:]):
      assert left.x1 < right.x0


def test_short_tick_labels_stay_as_typed():
  assert experiment_reports.tick_label('0.005') == '0.005'
  assert experiment_reports.tick_label('mobilenet_1.0_224_quantized') == (
      'mobilenet_1.0_\n224_quantized')


def test_wilson_interval_matches_the_textbook():
  low, high = experiment_reports.wilson_interval(9, 10)
  assert (round(low, 3), round(high, 3)) == (0.596, 0.982)
  low, high = experiment_reports.wilson_interval(58, 58)
  assert high == pytest.approx(1.0) and 0.93 < low < 0.94


def test_an_index_md_of_the_users_is_never_overwritten(tmp_path):
  (tmp_path / 'out').mkdir()
  (tmp_path / 'out' / 'index.md').write_text('# My lab notes\n')
  with pytest.raises(PoetsError, match='holds an index.md that '
                     'experiments.py did not write'):
    _experiment(tmp_path, 'learning_rate=0.01,1.0')
  assert (tmp_path / 'out' / 'index.md').read_text() == '# My lab notes\n'
  assert os.listdir(tmp_path / 'out') == ['index.md']


@pytest.mark.parametrize('content', ['not json', '[1, 2]', '{"name": "x"}',
                                     '{"name": 1, "started": 2, "swept": 3, '
                                     '"runs": 4, "finished": true}'])
def test_a_foreign_experiment_json_is_left_out_of_the_index(tmp_path,
                                                            content):
  (tmp_path / 'out' / 'theirs').mkdir(parents=True)
  (tmp_path / 'out' / 'theirs' / 'experiment.json').write_text(content)
  for _ in range(2):  # Every later sweep too.
    experiment = _experiment(tmp_path, 'learning_rate=0.01,1.0')
    experiment_reports.write_report(
        [fake_outcome(run, 1.0) for run in experiment.runs], experiment)
  index = (tmp_path / 'out' / 'index.md').read_text()
  assert 'theirs' not in index
  assert len([line for line in index.splitlines()
              if line.startswith('| 20')]) == 2
