"""Reading a model file: a frozen graph (.pb) or a TensorFlow Lite model.

No TensorFlow here, so label_image.py can read a .tflite and tell it from a
graph (by content, not by name) before deciding whether to load TensorFlow.
"""

import os

from poets import files
from poets.core import tflite_interpreter
from poets.errors import PoetsError

# Protocol buffers stop at 2 GiB, so no frozen graph is larger.
MAX_MODEL_BYTES = 2**31


def graph_fix(flag):
  return f'pass {flag} the .pb file that retrain.py wrote (--output_graph)'


def read_model_file(path, flag='--graph'):
  """The bytes of a graph or model file, or PoetsError saying why not."""
  fix = graph_fix(flag)
  if os.path.isdir(path):
    raise PoetsError(f'{flag} {path} is a folder, not a frozen graph; {fix}.')
  if not os.path.exists(path):
    also = (', or try --imagenet to label with the 1000 ImageNet classes'
            if flag == '--graph' else '')
    raise PoetsError(f'{flag} {path} not found; {fix}{also}.')
  return files.read_regular_file(path, flag, MAX_MODEL_BYTES, fix)


def is_tflite_file(path):
  """Whether `path` is a regular file that holds a TensorFlow Lite model;
  False for anything else, which the graph path then explains."""
  if not os.path.isfile(path):
    return False
  try:
    with open(path, 'rb') as f:
      return tflite_interpreter.is_tflite(f.read(8))
  except OSError:
    return False
