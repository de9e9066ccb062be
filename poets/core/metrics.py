"""Per-class precision and recall from a confusion matrix, for training's
final test and evaluate.py."""

import numpy as np


def precision(confusion):
  """Of the images predicted as each class, the share that are: the
  confusion matrix's diagonal over its columns ([true, predicted] counts);
  0 for a class never predicted."""
  predicted = confusion.sum(axis=0)
  return np.divide(np.diag(confusion), predicted,
                   out=np.zeros(len(predicted)), where=predicted > 0)


def recall(confusion):
  """Of the images of each class, the share predicted as it: the diagonal
  over the rows; 0 for a class without images."""
  actual = confusion.sum(axis=1)
  return np.divide(np.diag(confusion), actual,
                   out=np.zeros(len(actual)), where=actual > 0)
