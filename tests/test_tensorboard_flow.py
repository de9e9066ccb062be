"""TensorBoard stays readable after the README's flow and its homework.

TensorBoard 2.21's Scalars, Histograms and other classic tabs select every
run when there are at most 40 and none past that (tf-multi-checkbox's
maxNamesToEnableByDefault; Time Series' limit is 500). Earlier runs and
sweeps are kept out of tf_files/training_summaries, so the folder the
README points TensorBoard at holds the latest run of each summaries folder
only, however often the homework is run.
"""

import json
import os

import pytest

from conftest import make_image_dir
from poets import pipeline
from poets import settings
from poets import summaries
from poets.core import modules
from poets.extras import experiment_plan
from test_tensorboard import serve

pytestmark = pytest.mark.slow  # Starting TensorBoard takes 10-30 s.

# TensorBoard 2.21's classic tabs select every run up to this many, else none.
SELECTED_BY_DEFAULT = 40


def test_the_readme_flow_and_homework_leave_few_runs_all_selected(
    tmp_path, monkeypatch, tf2_module, tf1_hub_module):
  monkeypatch.chdir(tmp_path)
  base = settings.RetrainSettings(
      image_dir=make_image_dir(tmp_path / 'photos', per_class=6),
      tfhub_module=tf2_module, how_many_training_steps=4,
      eval_step_interval=2, random_seed=0)
  pipeline.run(base)  # The codelab's step 2, then again (a rerun).
  pipeline.run(base)
  pipeline.run(base.replace(  # Homework: the learning rate.
      learning_rate=0.5, output_graph='tf_files/retrained_graph_lr_0.5.pb',
      summaries_dir='tf_files/training_summaries/learning_rate_0.5'))
  pipeline.run(base.replace(  # Homework: another network.
      tfhub_module=tf1_hub_module,
      output_graph='tf_files/retrained_graph_other.pb'))
  for sweep in ('images_per_class=2,all', 'learning_rate=0.01,0.5'):
    experiment = experiment_plan.plan(  # Homework: experiment_runs.py's runs.
        [experiment_plan.parse_sweep(sweep, ['learning_rate'])],
        lambda overrides: base.replace(**{
            key: float(value) for key, value in overrides.items()}))
    for run in experiment.runs:
      pipeline.run(run.config, run.images_per_class)

  names = [modules.resolve_module('', module, '').name
           for module in (tf2_module, tf1_hub_module)]
  current = {f'{folder}/{run}' for folder in names + ['learning_rate_0.5']
             for run in ('train', 'validation')}
  logdir = tmp_path / summaries.ROOT
  with serve(logdir, current, tmp_path / 'tensorboard.log') as server:
    runs = json.loads(server('/data/runs'))
  assert len(runs) <= SELECTED_BY_DEFAULT, runs
  assert len(runs) == 3 * len(pipeline.RUN_FOLDERS)
  assert not [run for run in runs if 'previous' in run or 'experiment' in run]
  # Nothing is lost: the rerun's first run and the sweeps' runs are kept.
  (stamp,) = os.listdir(tmp_path / summaries.PREVIOUS_RUNS_ROOT / names[0])
  assert 'train' in os.listdir(tmp_path / summaries.PREVIOUS_RUNS_ROOT /
                               names[0] / stamp)
  sweeps = [os.path.join(root, name) for root, folders, _ in os.walk(
      tmp_path / experiment_plan.DEFAULT_EXPERIMENTS_DIR) for name in folders
            if name == 'train']
  assert len(sweeps) == 4
