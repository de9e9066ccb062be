"""evaluate.py and poets.extras.evaluation: every exported model measured on
the test photos retrain.py held out, alone or side by side."""

import os
import subprocess
import sys

import numpy as np
import pytest

from poets import settings
from poets.errors import PoetsError
from poets.extras import evaluation
from poets.extras import tflite_converter

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _config(retrained, *models, **kwargs):
  config, _ = retrained
  return settings.EvaluateConfig(**{
      'models': list(models), 'image_dir': config.image_dir,
      'labels': config.output_labels, **kwargs})


@pytest.fixture(scope='module')
def float_tflite(retrained, tmp_path_factory):
  config, _ = retrained
  path = str(tmp_path_factory.mktemp('evaluate') / 'optimized_graph.tflite')
  tflite_converter.convert_graph_file(settings.ConvertConfig(
      graph_def_file=config.output_graph, output_file=path,
      labels=config.output_labels))
  return path


def test_every_kind_of_model_scores_what_retrain_py_tested(retrained,
                                                           float_tflite):
  """The same photos as retrain.py's final test (same split, same pixels):
  the same accuracy and count, for the .pb, the SavedModel and the .tflite."""
  config, result = retrained
  photos, results = evaluation.evaluate(_config(
      retrained, config.output_graph, config.saved_model_dir, float_tflite))
  test = result.training.test
  assert len(photos.paths) == test.count
  for model in results:
    assert model.count == test.count
    assert model.accuracy == pytest.approx(test.accuracy)
    np.testing.assert_array_equal(model.confusion, test.confusion)
    assert 0 < model.cross_entropy < 1
  assert results[2].cross_entropy == pytest.approx(results[0].cross_entropy,
                                                   abs=1e-5)


def test_one_model_prints_the_codelabs_lines(retrained):
  config, result = retrained
  settings = _config(retrained, config.output_graph)
  photos, results = evaluation.evaluate(settings)
  lines = evaluation.format_report(settings, photos, results).splitlines()
  assert lines[0] == f'Accuracy: {result.training.test.accuracy:g}'
  assert lines[1].startswith('Cross Entropy: ')
  assert lines[2] == (f'Photos: {len(photos.paths)} of the {len(photos.paths)}'
                      f' test photos of {config.image_dir} '
                      '(--testing_percentage=10 --validation_percentage=10)')
  assert lines[3].startswith('Time per photo: ') and lines[3].endswith(' ms')
  assert 'Confusion matrix of ' + config.output_graph in '\n'.join(lines)


def test_other_percentages_choose_other_photos(retrained):
  config, _ = retrained
  ten = evaluation.test_photos(_config(retrained))
  thirty = evaluation.test_photos(_config(retrained, testing_percentage=30))
  assert set(ten.paths) < set(thirty.paths)
  with pytest.raises(PoetsError, match='test split .* is empty'):
    evaluation.test_photos(_config(retrained, testing_percentage=0))


def test_labels_that_miss_a_class_are_one_line(retrained, tmp_path):
  config, _ = retrained
  labels = tmp_path / 'labels.txt'
  labels.write_text('azure\ngreen\nred\n')
  with pytest.raises(PoetsError) as raised:
    evaluation.evaluate(_config(retrained, config.output_graph,
                                labels=str(labels)))
  assert str(raised.value) == (
      f'{config.output_graph} has no label for the class folders blue of '
      f'{config.image_dir} (its labels: azure, green, red); evaluate on the '
      'photos it was retrained on.')


@pytest.mark.slow
def test_script_compares_models_side_by_side(retrained, float_tflite):
  """The codelab's spelling, two models: one table, one row each."""
  config, result = retrained
  done = subprocess.run(
      [sys.executable, '-m', 'scripts.evaluate', config.output_graph,
       float_tflite, f'--image_dir={config.image_dir}',
       f'--labels={config.output_labels}'],
      cwd=REPO, capture_output=True, text=True, timeout=300, check=False)
  assert done.returncode == 0, done.stderr[-2000:]
  rows = done.stdout.splitlines()[1:4]
  assert rows[0].split()[:3] == ['model', 'Accuracy', 'Cross']
  accuracy = f'{result.training.test.accuracy:g}'
  assert rows[1].split()[:2] == [config.output_graph, accuracy]
  assert rows[2].split()[:2] == [float_tflite, accuracy]
