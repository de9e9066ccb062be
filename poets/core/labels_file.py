"""Labels files: one class name per line, as retrain.py writes them beside
the graph; read by labeling, evaluation and the TensorFlow Lite converter."""

import codecs

from poets import files


# A labels file names one class per line; ImageNet's 1000 take 30 kB.
MAX_LABELS_BYTES = 64 * 2**20
_LABELS_FIX = ('pass the labels file written beside the graph (--output_labels '
               'of retrain.py)')


def decode(data):
  """The lines of a labels file in UTF-8 (with or without a byte-order
  mark) or UTF-16 (with one); anything else is read as Latin-1, which
  decodes every byte, as editors on older Windows machines saved it."""
  if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
    text = data.decode('utf-16', errors='replace')
  else:
    try:
      text = data.decode('utf-8-sig')
    except UnicodeDecodeError:
      text = data.decode('latin-1')
  labels = [line.rstrip() for line in text.splitlines()]
  while labels and not labels[-1]:
    labels.pop()
  return labels


def read_bytes(path):
  """The bytes of the labels file at `path` (a regular file, not too big),
  or PoetsError naming --labels."""
  return files.read_regular_file(path, '--labels', MAX_LABELS_BYTES,
                                 _LABELS_FIX)


def read(path):
  return decode(read_bytes(path))
