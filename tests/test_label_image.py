"""label_image.py's single-image output, golden: the codelab's most visible
lines, as a user types the README's command and reads the terminal.

The graph is built here with fixed weights (the mean colour times a 3x5
matrix, plus a bias, then softmax), named as retrain.py names its graph, and
the photo is a solid colour, so decoding and resizing are exact and the
scores are the same on every machine.
"""

import os
import re
import subprocess
import sys

import numpy as np
from PIL import Image
import tensorflow as tf

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LABELS = ['daisy', 'dandelion', 'roses', 'sunflowers', 'tulips']
# Rows: what each of the mean red, green and blue adds to each label.
WEIGHTS = [[1.0, 2.0, 1.5, 3.0, 0.5],
           [1.0, 2.5, -1.0, 3.0, 0.0],
           [2.0, -1.0, 0.5, -2.0, 1.0]]
BIASES = [0.0, 0.0, 0.0, 0.95, 0.0]
SUNFLOWER_YELLOW = (255, 204, 0)

GOLDEN = """\
Evaluation time (1-image): <seconds>s

sunflowers (score=0.89901)
dandelion (score=0.08574)
daisy (score=0.00950)
roses (score=0.00316)
tulips (score=0.00259)
"""


def _write_graph(path):
  """A frozen graph as retrain.py exports one: `Placeholder` [N, 8, 8, 3] in
  [0, 1] -> `final_result`, the softmax over LABELS."""
  with tf.Graph().as_default() as graph:
    images = tf.compat.v1.placeholder(tf.float32, [None, 8, 8, 3],
                                      name='Placeholder')
    logits = tf.reduce_mean(images, axis=[1, 2]) @ tf.constant(
        WEIGHTS) + tf.constant(BIASES)
    tf.nn.softmax(logits, name='final_result')
  path.write_bytes(graph.as_graph_def().SerializeToString())


def test_one_photo_prints_the_codelabs_top_five(tmp_path):
  files = tmp_path / 'tf_files'
  (files / 'flower_photos' / 'sunflowers').mkdir(parents=True)
  _write_graph(files / 'retrained_graph.pb')
  (files / 'retrained_labels.txt').write_text(''.join(
      f'{label}\n' for label in LABELS))
  # Not the graph's size: label_image.py resizes to what the graph takes.
  Image.new('RGB', (30, 20), SUNFLOWER_YELLOW).save(
      files / 'flower_photos' / 'sunflowers' / 'photo.png')
  # The README's command, in the folder a user runs it from.
  done = subprocess.run(
      [sys.executable, os.path.join(ROOT, 'label_image.py'), '--graph',
       'tf_files/retrained_graph.pb', '--image',
       'tf_files/flower_photos/sunflowers/photo.png'], cwd=tmp_path,
      capture_output=True, text=True, timeout=300)
  assert done.returncode == 0, done.stderr
  assert re.sub(r'^(Evaluation time \(1-image\): )\d+\.\d{3}s$',
                r'\1<seconds>s', done.stdout, flags=re.M) == GOLDEN
  assert done.stderr == ''  # No start-up line, warning or traceback.
  # The golden scores are the graph's softmax worked out here, so a changed
  # graph or photo cannot keep a stale golden text.
  logits = np.array(SUNFLOWER_YELLOW) / 255.0 @ np.array(WEIGHTS) + BIASES
  scores = np.exp(logits) / np.exp(logits).sum()
  assert GOLDEN.splitlines()[2:] == [
      f'{LABELS[i]} (score={scores[i]:0.5f})' for i in np.argsort(-scores)]
