"""label_image.py, poets.core.labeling and poets.core.label_output: right scores,
right flags, clear errors.

One tiny retrained graph is made once per module by the real pipeline; the
codelab's MobileNet (`input`) and Inception (`Mul`) naming is mimicked by
small hand-built graphs that classify by mean colour.
"""

import csv
import io
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from conftest import ODD_FILE_NAMES, make_image_dir
from conftest import make_tf2_module
from poets import pipeline
from poets import settings
from poets.core import bottlenecks
from poets.core import frozen_graphs
from poets.core import image_decoding
from poets.core import label_output
from poets.core import labeling
from poets.core import modules
from poets.errors import PoetsError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The codelab graphs' classes, in the order of their weights' columns.
RGB_LABELS = ['red', 'green', 'blue']


@pytest.fixture(scope='module')
def retrained(tmp_path_factory):
  """A graph, labels, checkpoint and bottleneck cache made by retrain."""
  root = tmp_path_factory.mktemp('retrained')
  module = make_tf2_module(root / 'module')
  config = settings.RetrainSettings(
      image_dir=make_image_dir(root / 'photos'),
      output_graph=str(root / 'graph.pb'),
      output_labels=str(root / 'labels.txt'),
      bottleneck_dir=str(root / 'bottlenecks'),
      intermediate_output_graphs_dir=str(root / 'intermediate'),
      tfhub_module=module,
      model_dir=str(root / 'models'),
      how_many_training_steps=100, summaries_dir=str(root / 'summaries'),
      checkpoint_path=str(root / 'checkpoint' / 'ckpt'), random_seed=1)
  pipeline.run(config)
  return config


def _config(retrained, **kwargs):
  return settings.LabelConfig(graph=retrained.output_graph,
                              labels=retrained.output_labels,
                              **kwargs)


def _photo(retrained, colour, index=0):
  return os.path.join(retrained.image_dir, colour, f'{colour}_{index:03d}.jpg')


def _scores(result):
  return {p.label: p.score for p in result.predictions}


def _softmax(logits):
  exp = np.exp(logits - logits.max())
  return exp / exp.sum()


def test_defaults_give_the_training_sessions_probabilities(retrained):
  """No layer or size flags; the scores are the trained layer's softmax of
  the very bottleneck that training cached for the image."""
  image = _photo(retrained, 'green', 3)
  run = labeling.label_images(_config(retrained, images=[image]))
  (result,) = run.results
  assert result.error is None and result.predictions[0].label == 'green'

  checkpoint = tf.train.load_checkpoint(retrained.checkpoint_path)
  weights = checkpoint.get_tensor('final_retrain_ops/weights/final_weights')
  biases = checkpoint.get_tensor('final_retrain_ops/biases/final_biases')
  module_name = modules.resolve_module('', retrained.tfhub_module,
                                       retrained.model_dir).name
  bottleneck, problem = bottlenecks.read_bottleneck(
      bottlenecks.bottleneck_path(retrained.bottleneck_dir, 'green',
                                  os.path.basename(image), module_name))
  assert problem is None
  expected = _softmax(bottleneck.astype(np.float64) @ weights + biases)
  with open(retrained.output_labels) as f:
    labels = f.read().split('\n')[:-1]
  scores = _scores(result)
  np.testing.assert_allclose([scores[label] for label in labels], expected,
                             atol=1e-5)


def test_default_normalization_is_bit_identical_to_retrain():
  contents = tf.io.encode_jpeg(
      tf.constant(np.random.default_rng(3).integers(0, 256, [40, 30, 3]),
                  tf.uint8)).numpy()
  with tf.Graph().as_default(), tf.compat.v1.Session() as session:
    ours, retrains = session.run([
        image_decoding.decode_and_normalize(contents, 17, 23, 0.0, 255.0),
        image_decoding.decode_and_resize(contents, 17, 23)
    ])
  assert np.array_equal(ours, retrains)


def _save(graph, path):
  with open(path, 'wb') as f:
    f.write(graph.as_graph_def().SerializeToString())
  return str(path)


def _classify_by_mean_colour(image_batch):
  """The codelab graphs' stand-in network: softmax of 5 * mean R, G, B."""
  logits = 5.0 * tf.reduce_mean(image_batch, axis=[1, 2])
  return tf.nn.softmax(logits, name='final_result')


def _expected(path, size, mean, std):
  """What a graph trained on (pixel - mean) / std should answer, by way of
  retrain's own decode_and_resize."""
  with open(path, 'rb') as f:
    pixels = image_decoding.decode_and_resize(f.read(), size,
                                              size).numpy() * 255.0
  return _softmax(5.0 * ((pixels - mean) / std).mean(axis=(0, 1)))


@pytest.fixture(scope='module')
def codelab_graphs(tmp_path_factory):
  """Graphs named as the codelab's: MobileNet's `input` placeholder at 224,
  and Inception's DecodeJpeg -> ... -> `Mul` ([1, 299, 299, 3], in [-1, 1])."""
  root = tmp_path_factory.mktemp('codelab')
  with tf.Graph().as_default() as mobilenet:
    _classify_by_mean_colour(tf.compat.v1.placeholder(
        tf.float32, [None, 224, 224, 3], name='input'))
  with tf.Graph().as_default() as two_at_a_time:
    _classify_by_mean_colour(tf.compat.v1.placeholder(
        tf.float32, [2, 224, 224, 3], name='input'))
  with tf.Graph().as_default() as inception:
    contents = tf.compat.v1.placeholder(tf.string, [],
                                        name='DecodeJpeg/contents')
    decoded = tf.io.decode_jpeg(contents, channels=3)
    resized = tf.compat.v1.image.resize_bilinear(
        tf.expand_dims(tf.cast(decoded, tf.float32), 0), [299, 299])
    normalized = tf.multiply(resized - 128.0, 1.0 / 128.0, name='Mul')
    _classify_by_mean_colour(normalized)
  labels = root / 'labels.txt'
  labels.write_text(''.join(f'{label}\n' for label in RGB_LABELS))
  return {'input': _save(mobilenet, root / 'mobilenet.pb'),
          'Mul': _save(inception, root / 'inception.pb'),
          'fixed_batch': _save(two_at_a_time, root / 'two_at_a_time.pb'),
          'labels': str(labels), 'contents': contents.name}


@pytest.mark.parametrize('layer,size', [('input', 224), ('Mul', 299)])
def test_codelab_graphs_with_the_readme_flags(retrained, codelab_graphs,
                                              layer, size):
  paths = [_photo(retrained, colour, 1) for colour in RGB_LABELS]
  run = labeling.label_images(
      settings.LabelConfig(graph=codelab_graphs[layer],
                           labels=codelab_graphs['labels'],
                           images=paths,
                           input_layer=layer,
                           input_height=size,
                           input_width=size,
                           input_mean=128,
                           input_std=128))
  assert not run.warnings
  for path, result in zip(paths, run.results):
    scores = _scores(result)
    np.testing.assert_allclose([scores[label] for label in RGB_LABELS],
                               _expected(path, size, 128, 128), atol=1e-5)
    assert result.predictions[0].label == os.path.basename(
        os.path.dirname(path))


def test_a_fixed_batch_size_is_padded(retrained, codelab_graphs):
  paths = [_photo(retrained, colour, 1) for colour in RGB_LABELS]
  run = labeling.label_images(
      settings.LabelConfig(graph=codelab_graphs['fixed_batch'],
                           labels=codelab_graphs['labels'],
                           images=paths,
                           input_layer='input',
                           input_mean=128,
                           input_std=128))
  assert run.batches == 2
  assert [r.predictions[0].label for r in run.results] == RGB_LABELS


def test_mul_graph_agrees_with_its_own_decoding(retrained, codelab_graphs):
  """Fed at Mul, the graph scores like it does from the JPEG bytes (which
  resize with the older corner alignment, hence the tolerance)."""
  path = _photo(retrained, 'blue', 2)
  run = labeling.label_images(
      settings.LabelConfig(graph=codelab_graphs['Mul'],
                           labels=codelab_graphs['labels'],
                           images=[path],
                           input_layer='import/Mul:0',
                           input_mean=128,
                           input_std=128))
  mul = codelab_graphs['Mul']
  graph = frozen_graphs.import_graph(frozen_graphs.load_graph_def(mul), mul)
  with tf.compat.v1.Session(graph=graph) as session, open(path, 'rb') as f:
    own = session.run('import/final_result:0',
                      {f'import/{codelab_graphs["contents"]}': f.read()})[0]
  scores = _scores(run.results[0])
  np.testing.assert_allclose([scores[label] for label in RGB_LABELS], own,
                             atol=1e-3)


def test_an_inner_input_layer_is_flagged(retrained, tmp_path):
  """As in a retrained graph that scales its input before the network."""
  with tf.Graph().as_default() as graph:
    placeholder = tf.compat.v1.placeholder(tf.float32, [None, 32, 32, 3],
                                           name='Placeholder')
    _classify_by_mean_colour(tf.multiply(placeholder, 2.0, name='Mul_1') - 1)
  path = _save(graph, tmp_path / 'scaled.pb')
  image = _photo(retrained, 'red')

  def warnings(layer):
    return labeling.label_images(settings.LabelConfig(
        graph=path, labels=retrained.output_labels, images=[image],
        input_layer=layer)).warnings

  assert warnings('Mul_1') == [
      "--input_layer 'Mul_1' is an inner layer (Mul), not an input of the "
      'graph: what the graph does between its input and this layer is '
      'skipped, so the scores differ from its own; pass --input_layer '
      'Placeholder (its input, float32 [?,32,32,3]).']
  assert warnings('Placeholder') == []


def test_list_layers_answers_which_input_layer(retrained, codelab_graphs):
  assert labeling.list_layers(retrained.output_graph) == (
      'Inputs (--input_layer):\n'
      '  Placeholder float32 [?,32,32,3]\n'
      'Outputs (--output_layer):\n'
      '  final_result float32 [?,3] (Softmax)\n')
  inception = labeling.list_layers(codelab_graphs['Mul'])
  assert '  DecodeJpeg/contents string []\n' in inception
  assert '  Mul float32 [1,299,299,3] (Mul)\n' in inception


def test_mean_and_std_that_do_not_match_training_are_flagged(
    retrained, codelab_graphs):
  image = _photo(retrained, 'red')
  run = labeling.label_images(_config(retrained, images=[image],
                                      input_mean=128, input_std=128))
  (warning,) = run.warnings
  assert '--input_mean=0 --input_std=255' in warning
  run = labeling.label_images(
      settings.LabelConfig(graph=codelab_graphs['Mul'],
                           labels=codelab_graphs['labels'],
                           images=[image],
                           input_layer='Mul'))
  (warning,) = run.warnings
  assert '--input_mean=128 --input_std=128' in warning


def test_a_folder_is_labelled_in_batches(retrained):
  run = labeling.label_images(_config(retrained,
                                      image_dir=retrained.image_dir,
                                      batch_size=16, top_k=2))
  assert len(run.results) == 60 and run.batches == 4
  for result in run.results:
    assert result.predictions[0].label in result.image
    assert len(result.predictions) == 2
  rows = label_output.format_csv(run).splitlines()
  assert rows[0] == 'image,rank,label,score' and len(rows) == 1 + 60 * 2
  text = label_output.format_text(run)
  assert text.startswith('Evaluation time (60 images in 4 batches): ')


def test_a_bad_image_does_not_stop_the_batch(retrained, tmp_path):
  broken = tmp_path / 'broken.jpg'
  broken.write_bytes(b'not a photo')
  paths = [_photo(retrained, 'red'), str(broken), str(tmp_path),
           _photo(retrained, 'blue')]
  run = labeling.label_images(_config(retrained, images=paths))
  assert [r.error is None for r in run.results] == [True, False, False, True]
  assert run.batches == 1
  assert run.results[1].error.startswith(
      f'{broken}: cannot decode it as an image (')
  assert run.results[2].error == (
      f'{tmp_path}: is a folder; pass it with --image_dir.')
  (item, failed, _, _) = json.loads(label_output.format_json(run))
  assert item['image'] == paths[0] and 'error' not in item
  assert item['predictions'][0]['label'] == 'red'
  assert failed == {'image': str(broken), 'predictions': [],
                    'error': run.results[1].error}


def test_a_pipe_or_device_gets_an_error_not_a_hang(retrained, tmp_path):
  os.mkfifo(tmp_path / 'pipe.jpg')
  paths = [str(tmp_path / 'pipe.jpg'), '/dev/zero', _photo(retrained, 'red')]
  run = labeling.label_images(_config(retrained, images=paths))
  assert [r.error for r in run.results[:2]] == [
      f'{path}: not a regular file (a pipe or a device); pass a photo.'
      for path in paths[:2]]
  assert run.results[2].predictions[0].label == 'red'


def _error(**kwargs):
  with pytest.raises(PoetsError) as raised:
    labeling.label_images(settings.LabelConfig(**kwargs))
  message = str(raised.value)
  assert '\n' not in message
  return message


def test_errors_name_the_file_and_the_fix(retrained, codelab_graphs,
                                          tmp_path):
  image = _photo(retrained, 'red')
  graph, labels = retrained.output_graph, retrained.output_labels
  assert _error(graph=graph, labels=labels, images=[image],
                output_layer='softmax') == (
                    f"--output_layer: no operation 'softmax' in {graph}; its "
                    'outputs are: final_result float32 [?,3] (Softmax).')
  assert _error(graph=graph, labels=labels, images=[image],
                input_layer='input') == (
                    f"--input_layer: no operation 'input' in {graph}; its "
                    'inputs are: Placeholder float32 [?,32,32,3].')
  assert _error(graph=graph, labels=str(tmp_path / 'missing.txt'),
                images=[image]).startswith('Cannot read --labels')
  two_labels = tmp_path / 'two.txt'
  two_labels.write_text('red\ngreen\n')
  assert _error(graph=graph, labels=str(two_labels), images=[image]) == (
      f'--labels {two_labels} has 2 labels but --output_layer '
      f"'final_result' of {graph} gives 3 scores; pass the labels file "
      'written with this graph.')
  not_a_graph = tmp_path / 'graph.pb'
  not_a_graph.write_text('red\ngreen\n')
  assert _error(graph=str(not_a_graph), labels=labels,
                images=[image]).startswith(
                    f'--graph {not_a_graph} is not a frozen GraphDef')
  assert _error(graph=str(tmp_path / 'missing.pb'), labels=labels,
                images=[image]).startswith(
                    f'--graph {tmp_path / "missing.pb"} not found; ')
  assert _error(graph=str(tmp_path), labels=labels,
                images=[image]).startswith(f'--graph {tmp_path} is a folder')
  assert 'drop --input_height' in _error(graph=graph, labels=labels,
                                         images=[image], input_height=299)
  assert _error(graph=codelab_graphs['Mul'], labels=labels, images=[image],
                input_layer='DecodeJpeg/contents').startswith(
                    "--input_layer 'DecodeJpeg/contents' is a string tensor")
  assert _error(graph=graph, labels=labels).startswith('No images to label')
  assert 'must be a positive finite number' in _error(graph=graph, labels=labels,
                                      images=[image], input_std=0)


def test_script_labels_everything_it_can_then_fails_for_a_missing_image(
    retrained, tmp_path):
  """label_image.py at the process boundary: a folder of any file names
  (with a link loop) and photos given as comma lists and after --image,
  printed as CSV to a strict UTF-8 terminal; a missing photo is the last
  line, exit 1, no traceback (the messages are checked in-process above)."""
  folder = tmp_path / os.fsdecode(b'photos \xe9')
  (folder / 'up').mkdir(parents=True)
  for name in ODD_FILE_NAMES:
    shutil.copy(_photo(retrained, 'red'), folder / name)
  os.symlink('..', folder / 'up' / 'loop')  # Visited once, not forever.
  missing = os.path.join(retrained.image_dir, 'missing.jpg')
  red, green = _photo(retrained, 'red'), _photo(retrained, 'green')
  done = subprocess.run(
      [sys.executable, 'label_image.py', f'--graph={retrained.output_graph}',
       f'--labels={retrained.output_labels}', f'--image_dir={folder}',
       f'--image={red},{missing}', green, '--output_format=csv',
       '--top_k=1'], cwd=REPO, capture_output=True, timeout=300,
      env={**os.environ, 'PYTHONIOENCODING': 'utf-8:strict'})
  stderr = done.stderr.decode(errors='replace')
  assert done.returncode == 1 and 'Traceback' not in stderr, stderr
  assert stderr.splitlines()[-1] == (
      f'ERROR: {missing}: not found; check the path.')
  rows = list(csv.DictReader(io.StringIO(
      done.stdout.decode(errors='surrogateescape'), newline='')))
  assert sorted((row['image'], row['label']) for row in rows) == sorted(
      [(red, 'red'), (green, 'green')] +
      [(str(folder / name), 'red') for name in ODD_FILE_NAMES])
