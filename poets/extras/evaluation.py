"""Evaluation: how exported models do on the test photos retrain.py held out.

The codelab's second half measured each model it made for the phone
(`python -m scripts.evaluate tf_files/optimized_graph.pb` printed `Accuracy`
and `Cross Entropy`), with five classes, the flower folder and MobileNet's
input written into the script. Here any exported model is measured: a frozen
graph, a .tflite (float, dynamic or int8) or a SavedModel folder, each run as
label_image.py runs it, on the test split that retrain.py made of the same
--image_dir with the same percentages (the same photos, by the same hash of
their names). Several models are measured on the same photos and reported
side by side.

Cross entropy is the mean of -log(score of the true class), from the scores
the model gives (a .tflite has no logits), each score at least 1e-7 so an
int8 model's zero does not make it infinite.
"""

import dataclasses

import numpy as np

from poets import settings
from poets.core import image_listing
from poets.core import labeling
from poets.core import metrics
from poets.errors import PoetsError

SMALLEST_SCORE = 1e-7
ALL_SCORES = 2**31 - 1  # As label_image's --top_k: every label's score.


@dataclasses.dataclass
class TestPhotos:
  """The test split: photo paths and the label of each."""
  paths: list[str]
  labels: list[str]  # The true label of each photo.
  classes: list[str]  # Every class of --image_dir, sorted.


@dataclasses.dataclass
class ModelResult:
  """One model on the test photos."""
  model: str
  accuracy: float
  cross_entropy: float
  count: int  # Photos labelled.
  seconds_per_photo: float  # In the model, as label_image.py reports it.
  confusion: np.ndarray  # [true class, predicted class], in classes order.

  @property
  def recall(self):
    return metrics.recall(self.confusion)

  @property
  def precision(self):
    return metrics.precision(self.confusion)


def test_photos(config):
  """The photos retrain.py tests on for this --image_dir and percentages."""
  image_lists = image_listing.create_image_lists(config.image_dir,
                                          config.testing_percentage,
                                          config.validation_percentage)
  paths, labels = [], []
  for index, image_class in enumerate(image_lists.classes):
    for name in image_class.testing:
      paths.append(image_lists.image_path(index, name))
      labels.append(image_class.label)
  if not paths:
    raise PoetsError(
        f'The test split of {config.image_dir} is empty at '
        f'--testing_percentage={config.testing_percentage:g}; add photos or '
        'raise the percentage (as retrain.py was run).')
  return TestPhotos(paths, labels, image_lists.labels)


def evaluate_model(model, photos, config):
  """Runs `model` (a path) on `photos`; returns a ModelResult. Raises
  PoetsError when the model's labels do not name the photos' classes."""
  run = labeling.label_images(settings.LabelConfig(
      graph=model, labels=config.labels, images=photos.paths,
      input_layer=config.input_layer, output_layer=config.output_layer,
      input_mean=config.input_mean, input_std=config.input_std,
      top_k=ALL_SCORES,
      batch_size=config.batch_size))
  labelled = [(result, truth) for result, truth in zip(run.results,
                                                       photos.labels)
              if result.error is None]
  if not labelled:
    raise PoetsError(f'None of the {len(photos.paths)} test photos of '
                     f'{config.image_dir} could be decoded.')
  known = {p.label for p in labelled[0][0].predictions}
  missing = sorted(set(photos.classes) - known)
  if missing:
    raise PoetsError(
        f'{model} has no label for the class folders {", ".join(missing)} '
        f'of {config.image_dir} (its labels: {", ".join(sorted(known))}); '
        'evaluate on the photos it was retrained on.')
  index = {label: i for i, label in enumerate(photos.classes)}
  confusion = np.zeros([len(index)] * 2, np.int64)
  true_scores = []
  for result, truth in labelled:
    scores = {p.label: p.score for p in result.predictions}
    # A label the folder lacks counts as wrong, in no column.
    predicted = result.predictions[0].label
    if predicted in index:
      confusion[index[truth], index[predicted]] += 1
    true_scores.append(scores[truth])
  count = len(labelled)
  return ModelResult(
      model, float(np.trace(confusion)) / count,
      float(-np.mean(np.log(np.maximum(true_scores, SMALLEST_SCORE)))),
      count, run.seconds / count, confusion)


def evaluate(config):
  """Every model of `config` on the same test photos: (TestPhotos, list of
  ModelResult). Raises PoetsError."""
  if not config.models:
    raise PoetsError('No model to evaluate; pass one or more, such as '
                     'tf_files/optimized_graph.pb.')
  photos = test_photos(config)
  return photos, [evaluate_model(model, photos, config)
                  for model in config.models]


def _table(header, rows):
  """Columns right-aligned but the first."""
  widths = [max(len(row[i]) for row in [header] + rows)
            for i in range(len(header))]
  return [f'{row[0]:<{widths[0]}}  ' + '  '.join(
      f'{cell:>{width}}' for cell, width in zip(row[1:], widths[1:]))
          for row in [header] + rows]


def format_report(config, photos, results):
  """The text evaluate.py prints: the codelab's two lines for one model, a
  side-by-side table for several, then the per-class results."""
  split = (f'{len(photos.paths)} test photos of {config.image_dir} '
           f'(--testing_percentage={config.testing_percentage:g} '
           f'--validation_percentage={config.validation_percentage:g})')
  if len(results) == 1:
    result = results[0]
    lines = [f'Accuracy: {result.accuracy:g}',
             f'Cross Entropy: {result.cross_entropy:g}',
             f'Photos: {result.count} of the {split}',
             f'Time per photo: {result.seconds_per_photo * 1000:.1f} ms']
  else:
    lines = [f'On the {split}:'] + _table(
        ['model', 'Accuracy', 'Cross Entropy', 'photos', 'ms/photo'],
        [[r.model, f'{r.accuracy:g}', f'{r.cross_entropy:g}', str(r.count),
          f'{r.seconds_per_photo * 1000:.1f}'] for r in results])
  lines += ['', 'Per class (precision/recall), count:']
  counts = [photos.labels.count(label) for label in photos.classes]
  lines += _table(
      ['class', 'count'] + [r.model for r in results],
      [[label, str(count)] + [f'{r.precision[i]:.3f}/{r.recall[i]:.3f}'
                              for r in results]
       for i, (label, count) in enumerate(zip(photos.classes, counts))])
  for result in results:
    lines += ['', f'Confusion matrix of {result.model} (rows: true class, '
              'columns: predicted, in label order):']
    lines += _table(['', *map(str, range(len(photos.classes)))],
                    [[label, *map(str, row)] for label, row in
                     zip(photos.classes, result.confusion)])
  return '\n'.join(lines) + '\n'
