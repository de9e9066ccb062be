"""End to end with the real default module: slow, offline, run in CI."""

import os
import re
import subprocess
import sys

import pytest

from conftest import make_image_dir
from poets import pipeline
from poets import settings

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FLOWERS = os.path.join(ROOT, '..', 'shared', 'data', 'flower_photos_sample')


@pytest.mark.slow
def test_default_module_retrains_and_exports(tmp_path, lite0_dir):
  config = settings.RetrainSettings(
      image_dir=make_image_dir(tmp_path / 'photos', per_class=20),
      testing_percentage=25, validation_percentage=10,
      output_graph=str(tmp_path / 'g.pb'),
      output_labels=str(tmp_path / 'labels.txt'),
      bottleneck_dir=str(tmp_path / 'bottlenecks'),
      model_dir=os.path.dirname(lite0_dir),  # Built on first use: README.
      how_many_training_steps=200, eval_step_interval=100,
      summaries_dir=str(tmp_path / 's'),
      checkpoint_path=str(tmp_path / 'c' / 'x'), random_seed=0)
  result = pipeline.run(config)
  names = os.listdir(tmp_path / 'bottlenecks' / 'red')
  assert all(name.endswith('_efficientnet_lite0.txt') for name in names)
  test = result.training.test
  assert test is not None and test.count >= 6 and test.accuracy >= 0.9
  assert os.path.getsize(tmp_path / 'g.pb') > 4_000_000  # Module included.


@pytest.mark.slow
@pytest.mark.skipif(not os.path.isdir(FLOWERS),
                    reason='../shared/data/flower_photos_sample is absent')
def test_flower_sample_offline_with_no_module_flags(tmp_path):
  """The issue's promise: a fresh clone, no network, >= 85% on real flowers."""
  process = subprocess.run(
      [sys.executable, os.path.join(ROOT, 'retrain.py'), '--image_dir',
       os.path.abspath(FLOWERS), '--random_seed', '0'],
      cwd=tmp_path, capture_output=True, text=True, timeout=600)
  assert process.returncode == 0, process.stderr[-3000:]
  printed = re.findall(r'^INFO: Final test accuracy = ([\d.]+)% \(N=(\d+)\)$',
                       process.stderr, re.M)
  assert len(printed) == 1, process.stderr[-3000:]
  (accuracy, count), = printed
  assert float(accuracy) >= 85 and int(count) >= 50  # 10% of 600 photos.
  assert (tmp_path / 'tf_files' / 'retrained_graph.pb').exists()
