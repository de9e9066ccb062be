"""Graphs and labels someone hands label_image.py or tflite_convert.py:
refused in one line when they would reach outside the program, hang, fill
memory or give something other than scores; labels in any common encoding.
"""

import codecs
import os
import threading

import numpy as np
import pytest
import tensorflow as tf

from conftest import encode, solid_image
from poets import settings
from poets.core import frozen_graphs
from poets.core import label_results
from poets.core import labeling
from poets.core import labels_file
from poets.core import model_files
from poets.errors import PoetsError
from poets.extras import tflite_converter

LABELS = ['red', 'green', 'blue']


def _graph(tmp_path, extra=None, output=None):
  """A colour classifier: Placeholder -> mean colour -> final_result; with
  `extra(images, scores)` adding ops that run with it, and `output(images,
  scores)` replacing what final_result is."""
  graph = tf.Graph()
  with graph.as_default():
    images = tf.compat.v1.placeholder(tf.float32, [None, 8, 8, 3],
                                      name='Placeholder')
    scores = tf.matmul(tf.reduce_mean(images, axis=[1, 2]),
                       tf.constant(np.eye(3, dtype=np.float32) * 10))
    dependencies = [extra(images, scores)] if extra else []
    with tf.control_dependencies(dependencies):
      result = output(images, scores) if output else tf.nn.softmax(scores)
      tf.identity(result, name='final_result')
  path = tmp_path / 'graph.pb'
  path.write_bytes(graph.as_graph_def().SerializeToString())
  (tmp_path / 'labels.txt').write_text('\n'.join(LABELS) + '\n')
  (tmp_path / 'red.jpg').write_bytes(encode(solid_image((230, 20, 20), 1,
                                                        size=8)))
  return str(path)


def _label(tmp_path, graph, **kwargs):
  config = {'graph': graph, 'labels': str(tmp_path / 'labels.txt'),
            'images': [str(tmp_path / 'red.jpg')], **kwargs}
  return labeling.label_images(settings.LabelConfig(**config))


def _one_line(call, *args, **kwargs):
  with pytest.raises(PoetsError) as raised:
    call(*args, **kwargs)
  assert '\n' not in str(raised.value)
  return str(raised.value)


def test_a_graph_that_writes_files_is_refused_unless_allowed(tmp_path):
  """A WriteFile wired before final_result wrote a file of the graph's
  choosing, silently."""
  target = tmp_path / 'written_by_the_graph.txt'
  graph = _graph(tmp_path, lambda images, scores: tf.io.write_file(
      str(target), 'owned'))
  message = _one_line(_label, tmp_path, graph)
  assert message.startswith(f'--graph {graph} holds ops that reach outside '
                            'this program (WriteFile)')
  assert '--allow_io_ops' in message
  assert not target.exists()
  message = _one_line(tflite_converter.convert_graph_file, settings.ConvertConfig(
      graph_def_file=graph, output_file=str(tmp_path / 'm.tflite'),
      labels=str(tmp_path / 'labels.txt')))
  assert message.startswith(f'--graph_def_file {graph} holds ops')
  run = _label(tmp_path, graph, allow_io_ops=True)
  assert run.results[0].predictions[0].label == 'red'
  assert target.read_text() == 'owned'


def test_io_ops_inside_functions_are_found(tmp_path):

  @tf.function
  def leak(scores):
    tf.io.write_file(str(tmp_path / 'x'), 'y')
    return scores

  graph = _graph(tmp_path, output=lambda images, scores: tf.nn.softmax(
      leak(scores)))
  assert 'WriteFile' in _one_line(_label, tmp_path, graph)


def test_classifier_ops_are_not_io_ops(retrained):
  config, _ = retrained
  graph_def = frozen_graphs.load_graph_def(config.output_graph)
  assert frozen_graphs.io_ops(graph_def) == []


@pytest.mark.parametrize('flag', ['graph', 'labels'])
def test_a_pipe_is_refused_not_waited_on(tmp_path, flag):
  graph = _graph(tmp_path)
  fifo = tmp_path / 'fifo'
  os.mkfifo(fifo)
  result = {}
  worker = threading.Thread(target=lambda: result.update(
      message=_one_line(_label, tmp_path, **{'graph': graph,
                                             flag: str(fifo)})), daemon=True)
  worker.start()
  worker.join(timeout=20)
  if worker.is_alive():  # Let the hung reader go, then fail.
    with open(fifo, 'wb'):
      pass
    pytest.fail(f'--{flag} on a FIFO hangs')
  assert result['message'] == (
      f'--{flag} {fifo} is not a regular file (a pipe, a device or a '
      'socket); ' + ('pass --graph the .pb file that retrain.py wrote '
                     '(--output_graph).' if flag == 'graph' else
                     labels_file._LABELS_FIX + '.'))


def test_a_device_is_refused_before_reading(tmp_path):
  _graph(tmp_path)
  assert 'not a regular file' in _one_line(_label, tmp_path, '/dev/zero')
  assert 'not a regular file' in _one_line(
      tflite_converter.convert_graph_file, settings.ConvertConfig(
          graph_def_file='/dev/zero', output_file=str(tmp_path / 'm.tflite'),
          labels=str(tmp_path / 'labels.txt')))


def test_a_huge_graph_file_is_refused_before_reading(tmp_path):
  graph = tmp_path / 'sparse.pb'
  with open(graph, 'wb') as f:
    f.truncate(model_files.MAX_MODEL_BYTES + 1)  # Sparse: no disk used.
  _graph(tmp_path)
  message = _one_line(_label, tmp_path, str(graph))
  assert 'more than the 2,048 MiB such a file can be' in message


@pytest.mark.parametrize('output, what', [
    (lambda images, scores: tf.reduce_sum(scores), 'shape []'),
    (lambda images, scores: tf.strings.as_string(scores), 'text values'),
    (lambda images, scores: tf.reshape(scores, [-1]), 'shape [3] for a '
     'batch of 1'),
    (lambda images, scores: tf.debugging.check_numerics(
        scores / 0.0 - scores / 0.0, 'scores'), 'failed while labelling'),
])
def test_any_output_gets_one_line(tmp_path, output, what):
  graph = _graph(tmp_path, output=output)
  assert what in _one_line(_label, tmp_path, graph)


@pytest.mark.parametrize('encoding, data', [
    ('utf-8', 'daisy\nrosé\n'.encode()),
    ('utf-8 with BOM', codecs.BOM_UTF8 + 'daisy\nrosé\n'.encode()),
    ('utf-16 LE', 'daisy\r\nrosé\r\n'.encode('utf-16')),
    ('utf-16 BE', codecs.BOM_UTF16_BE + 'daisy\nrosé\n'.encode('utf-16-be')),
    ('latin-1', 'daisy\nrosé\n'.encode('latin-1')),
])
def test_labels_in_any_common_encoding(encoding, data):
  del encoding  # The test's name.
  assert labels_file.decode(data) == ['daisy', 'rosé']


def test_a_batch_larger_than_memory_is_lowered_with_a_warning(tmp_path,
                                                              monkeypatch):
  graph = _graph(tmp_path)
  monkeypatch.setattr(label_results, 'available_memory', lambda: 2**20)
  run = _label(tmp_path, graph, batch_size=4096)
  assert run.results[0].predictions[0].label == 'red'
  assert run.warnings[0] == (
      '--batch_size 4096 would take about 24 MiB at 8x8, more than the 1 MiB '
      'free; labelling 170 images at a time instead.')


def test_a_huge_sparse_photo_is_not_read(tmp_path):
  graph = _graph(tmp_path)
  huge = tmp_path / 'huge.jpg'
  with open(huge, 'wb') as f:
    f.truncate(60 * 2**30)  # Sparse: 60 GB that take no disk.
  run = _label(tmp_path, graph, images=[str(huge), str(tmp_path / 'red.jpg')])
  assert run.results[0].error == (
      f'{huge}: cannot read it (61,440 MiB, larger than any photo).')
  assert run.results[1].predictions[0].label == 'red'


def test_a_saved_model_that_writes_files_on_load_is_refused(tmp_path):
  """Loading a SavedModel runs its init op, before any photo."""
  target = tmp_path / 'written_on_load.txt'
  graph = tf.Graph()
  with graph.as_default():
    images = tf.compat.v1.placeholder(tf.float32, [None, 8, 8, 3])
    scores = tf.nn.softmax(tf.reduce_mean(images, axis=[1, 2]))
    write = tf.io.write_file(str(target), 'owned')
    with tf.compat.v1.Session() as session:
      builder = tf.compat.v1.saved_model.Builder(str(tmp_path / 'sm'))
      builder.add_meta_graph_and_variables(
          session, [tf.compat.v1.saved_model.SERVING], main_op=write,
          signature_def_map={'serving_default': (
              tf.compat.v1.saved_model.predict_signature_def(
                  {'image': images}, {'prediction': scores}))})
      builder.save()
  _graph(tmp_path)
  message = _one_line(_label, tmp_path, str(tmp_path / 'sm'))
  assert 'holds ops that reach outside this program (WriteFile)' in message
  assert not target.exists()
