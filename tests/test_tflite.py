"""TensorFlow Lite: retrain.py --output_tflite, tflite_convert.py, and
label_image.py with a .tflite model.

One tiny graph is retrained per quantization by the real pipeline (same seed
and bottleneck cache, so the same layer), on three separable colour classes;
each .tflite must label every photo as the .pb does.
"""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from conftest import make_image_dir
from conftest import make_tf2_module
from poets.core import labeling
from poets.extras import tflite_converter
from poets.core import tflite_interpreter
from poets import pipeline
from poets import settings
from poets.errors import PoetsError
from poets.core import tflite_metadata

COLOURS = ['blue', 'green', 'red']
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope='module')
def exported(tmp_path_factory):
  """{quantization: RetrainSettings} whose outputs include the .tflite."""
  root = tmp_path_factory.mktemp('tflite')
  base = settings.RetrainSettings(
      image_dir=make_image_dir(root / 'photos', per_class=20),
      bottleneck_dir=str(root / 'bottlenecks'),
      tfhub_module=make_tf2_module(root / 'module'),
      model_dir=str(root / 'models'),
      how_many_training_steps=100, eval_step_interval=50,
      summaries_dir=str(root / 'summaries'),
      checkpoint_path=str(root / 'checkpoint' / 'ckpt'), random_seed=0)
  configs = {}
  for quantization in settings.QUANTIZATIONS:
    out = root / quantization
    configs[quantization] = base.replace(
        output_graph=str(out / 'graph.pb'),
        output_labels=str(out / 'labels.txt'),
        output_tflite=str(out / 'model.tflite'),
        tflite_quantization=quantization)
    pipeline.run(configs[quantization])
  return configs


def _photos(config):
  return [os.path.join(config.image_dir, colour, name)
          for colour in COLOURS
          for name in sorted(os.listdir(os.path.join(config.image_dir,
                                                     colour)))]


def _label(graph, config, **kwargs):
  run = labeling.label_images(settings.LabelConfig(
      graph=graph, labels=config.output_labels,
      images=kwargs.pop('images', None) or _photos(config), **kwargs))
  assert all(r.error is None for r in run.results)
  return run


def _top1(run):
  return [r.predictions[0].label for r in run.results]


def _scores(run):
  """[images, labels] scores in the labels file's order."""
  return np.array([[{p.label: p.score for p in r.predictions}[label]
                    for label in COLOURS] for r in run.results])


@pytest.mark.parametrize('quantization', settings.QUANTIZATIONS)
def test_each_quantization_labels_every_photo_as_the_pb(exported,
                                                        quantization):
  config = exported[quantization]
  from_pb = _label(config.output_graph, config)
  from_tflite = _label(config.output_tflite, config)
  expected = [os.path.basename(os.path.dirname(r.image))
              for r in from_pb.results]
  assert _top1(from_pb) == expected  # The classes are separable.
  assert _top1(from_tflite) == expected
  # int8 scores come back dequantized (output scale 1/256), not raw int8.
  np.testing.assert_allclose(_scores(from_tflite), _scores(from_pb),
                             atol=0.02)


def test_float_tflite_gives_the_pb_probabilities(exported):
  config = exported['none']
  np.testing.assert_allclose(_scores(_label(config.output_tflite, config)),
                             _scores(_label(config.output_graph, config)),
                             atol=1e-4)


def test_int8_model_takes_pixels_and_gives_uint8_scores(exported):
  layers = labeling.list_layers(exported['int8'].output_tflite)
  # Scale 1/255, zero point 0: the input holds the pixels as they are.
  assert layers.startswith('Inputs (--input_layer):\n  Placeholder uint8 '
                           '[?,32,32,3] (scale 0.00392157, zero point 0)')
  assert '\nOutputs (--output_layer):\n  final_result uint8 [?,3] (' in (
      layers)
  assert labeling.list_layers(exported['none'].output_tflite) == (
      'Inputs (--input_layer):\n  Placeholder float32 [?,32,32,3]\n'
      'Outputs (--output_layer):\n  final_result float32 [?,3]\n')


def test_batches_give_the_same_scores_as_one_at_a_time(exported):
  config = exported['int8']
  batched = _label(config.output_tflite, config, batch_size=7)
  single = _label(config.output_tflite, config, batch_size=1)
  assert batched.batches == 9 and single.batches == 60  # 60 photos
  np.testing.assert_array_equal(_scores(batched), _scores(single))


def test_models_are_told_apart_by_content_not_name(exported, tmp_path):
  config = exported['dynamic']
  tflite_as_pb = tmp_path / 'model.pb'
  tflite_as_pb.write_bytes(open(config.output_tflite, 'rb').read())
  pb_as_tflite = tmp_path / 'graph.tflite'
  pb_as_tflite.write_bytes(open(config.output_graph, 'rb').read())
  photos = _photos(config)[::10]
  assert _top1(_label(str(tflite_as_pb), config, images=photos)) == _top1(
      _label(str(pb_as_tflite), config, images=photos))


def _convert(config, **kwargs):
  size = tflite_converter.convert_graph_file(settings.ConvertConfig(
      graph_def_file=config.output_graph, labels=config.output_labels,
      **kwargs))
  assert size == os.path.getsize(kwargs['output_file'])


@pytest.mark.parametrize('quantization', settings.QUANTIZATIONS)
def test_converting_an_existing_graph_as_the_codelab_did(exported, tmp_path,
                                                         capfd, quantization):
  config = exported['none']
  output = str(tmp_path / 'optimized_graph.lite')
  _convert(config, output_file=output, input_array='import/Placeholder:0',
           output_array='final_result', quantization=quantization,
           image_dir=config.image_dir)
  # The converter's own print of its int8 settings stays off the terminal.
  assert 'fully_quantize' not in capfd.readouterr().err
  assert _top1(_label(output, config)) == _top1(
      _label(config.output_graph, config))


def test_calibration_images_are_spread_over_every_class():
  paths = [f'{colour}/{i}.jpg' for colour in COLOURS for i in range(200)]
  chosen = tflite_converter.calibration_images(paths, 30)
  assert len(chosen) == len(set(chosen)) == 30
  assert {path.split('/')[0] for path in chosen[:10]} == {'blue'}
  assert [sum(p.startswith(c) for p in chosen) for c in COLOURS] == [10] * 3
  assert tflite_converter.calibration_images(paths[:5], 30) == paths[:5]


def _error(function, *args, **kwargs):
  with pytest.raises(PoetsError) as raised:
    function(*args, **kwargs)
  message = str(raised.value)
  assert '\n' not in message
  return message


def test_converter_mistakes_are_one_line(exported, tmp_path):
  config = exported['none']
  graph = config.output_graph
  out = str(tmp_path / 'm.tflite')

  def error(**kwargs):
    kwargs = {'graph_def_file': graph, 'output_file': out,
              'labels': config.output_labels, **kwargs}
    return _error(tflite_converter.convert_graph_file, settings.ConvertConfig(**kwargs))

  assert error(input_array='input') == (
      f"--input_array: no operation 'input' in {graph}; its inputs are: "
      'Placeholder float32 [?,32,32,3].')
  assert error(output_array='final_layer') == (
      f"--output_array: no operation 'final_layer' in {graph}; its outputs "
      'are: final_result float32 [?,3] (Softmax).')
  text = tmp_path / 'labels.pb'
  text.write_text('red\ngreen\n')
  assert error(graph_def_file=str(text)).startswith(
      f'--graph_def_file {text} is not a frozen GraphDef')
  assert error(graph_def_file=config.output_tflite) == (
      f'--graph_def_file {config.output_tflite} is already a TensorFlow '
      'Lite model, not a frozen GraphDef; pass --graph_def_file the .pb file '
      'that retrain.py wrote (--output_graph).')
  assert error(quantization='int8').startswith(
      '--quantization int8 calibrates on photos; pass --image_dir')
  assert error(quantization='int8', image_dir=str(tmp_path)).startswith(
      f'--image_dir {tmp_path} holds no images')
  assert error(output_file=str(tmp_path)).startswith(
      f'--output_file {tmp_path} is a folder')
  assert error(labels=str(text)) == (
      f'--labels {text} has 2 labels but the model gives 3 scores; pass the '
      'labels file written with this graph.')
  assert error(labels=str(tmp_path / 'none.txt')).startswith(
      f'Cannot read --labels {tmp_path / "none.txt"} (')
  assert not os.path.exists(out)


def test_int8_with_photos_that_do_not_decode_says_so(exported, tmp_path):
  (tmp_path / 'photos').mkdir()
  for i in range(3):
    (tmp_path / 'photos' / f'{i}.jpg').write_bytes(b'not a photo')
  assert _error(tflite_converter.convert_graph_file, settings.ConvertConfig(
      graph_def_file=exported['none'].output_graph,
      output_file=str(tmp_path / 'm.tflite'), quantization='int8',
      labels=exported['none'].output_labels,
      image_dir=str(tmp_path / 'photos'))) == (
          'int8 needs calibration photos, but none of the 3 given could be '
          'decoded; pass photos like the ones the model will label.')


def test_retrain_tflite_flags_are_checked_before_any_work(exported,
                                                          tmp_path):
  config = exported['none'].replace(bottleneck_dir=str(tmp_path / 'b'))
  assert _error(pipeline.run, config.replace(
      output_tflite='', tflite_quantization='int8')).startswith(
          '--tflite_quantization int8 needs --output_tflite')
  assert _error(pipeline.run, config.replace(
      output_tflite=str(tmp_path))).startswith(
          f'--output_tflite {tmp_path} is a folder')
  assert _error(pipeline.run, config.replace(
      output_tflite=config.output_graph)).startswith(
          f'--output_tflite {config.output_graph} is also --output_graph')
  assert _error(pipeline.run, config.replace(
      tflite_quantization='float16')) == (
          '--tflite_quantization=float16 is not one of none, dynamic, int8.')
  assert not os.path.exists(tmp_path / 'b')


def test_damaged_tflite_models_are_one_line(exported, tmp_path):
  config = exported['int8']
  with open(config.output_tflite, 'rb') as f:
    data = f.read()
  truncated = tmp_path / 'truncated.tflite'
  truncated.write_bytes(data[:len(data) // 2])
  photo = _photos(config)[:1]

  def error(graph, **kwargs):
    return _error(labeling.label_images, settings.LabelConfig(
        graph=str(graph), labels=config.output_labels, images=photo,
        **kwargs))

  assert error(truncated) == (
      f'--graph {truncated} is a damaged TensorFlow Lite model (The model is '
      'not a valid Flatbuffer buffer); convert the graph again (retrain.py '
      '--output_tflite, or tflite_convert.py) and pass the new file as '
      '--graph.')
  not_a_model = tmp_path / 'notes.tflite'
  not_a_model.write_text('a shopping list, not a model')
  assert error(not_a_model) == tflite_interpreter.not_tflite_message(
      str(not_a_model), '--graph')
  assert error(config.output_tflite, input_layer='input').startswith(
      f"--input_layer: no tensor 'input' in {config.output_tflite}; its "
      'inputs are: Placeholder uint8 [?,32,32,3] (scale ')
  assert 'drop --input_height' in error(config.output_tflite,
                                        input_height=224)
  wrong_labels = tmp_path / 'labels.txt'
  wrong_labels.write_text('a\nb\n')
  assert _error(labeling.label_images, settings.LabelConfig(
      graph=config.output_tflite, labels=str(wrong_labels),
      images=photo)).startswith(f'--labels {wrong_labels} has 2 labels but')


def test_tflite_convert_replaces_only_tflite_models(exported, tmp_path):
  """The same path as input and output overwrote the input graph."""
  graph = tmp_path / 'graph.pb'
  shutil.copy(exported['none'].output_graph, graph)
  before = graph.read_bytes()
  labels = exported['none'].output_labels
  for output, message in [(graph, 'is the --graph_def_file itself'),
                          (tmp_path / '.' / 'graph.pb', 'itself')]:
    assert message in _error(tflite_converter.convert_graph_file, settings.ConvertConfig(
        graph_def_file=str(graph), output_file=str(output),
        labels=labels))
  notes = tmp_path / 'notes.tflite'
  notes.write_text('my notes')
  assert 'exists and is not a TensorFlow Lite model' in _error(
      tflite_converter.convert_graph_file, settings.ConvertConfig(
          graph_def_file=str(graph), output_file=str(notes),
          labels=labels))
  assert graph.read_bytes() == before
  assert notes.read_text() == 'my notes'
  old = tmp_path / 'old.tflite'
  shutil.copy(exported['none'].output_tflite, old)
  tflite_converter.convert_graph_file(settings.ConvertConfig(
      graph_def_file=str(graph), output_file=str(old), labels=labels))


@pytest.mark.parametrize('quantization', settings.QUANTIZATIONS)
def test_every_tflite_carries_its_labels(exported, quantization):
  config = exported[quantization]
  with open(config.output_tflite, 'rb') as f:
    assert tflite_metadata.read_labels(f.read()) == COLOURS
  run = labeling.label_images(settings.LabelConfig(
      graph=config.output_tflite, images=_photos(config)[::20]))
  assert _top1(run) == COLOURS


def test_given_labels_win_over_the_models_own(exported, tmp_path):
  config = exported['none']
  named = tmp_path / 'labels.txt'
  named.write_text('azure\nemerald\nruby\n')
  run = labeling.label_images(settings.LabelConfig(
      graph=config.output_tflite, labels=str(named),
      images=_photos(config)[::20]))
  assert _top1(run) == ['azure', 'emerald', 'ruby']


def test_label_image_on_a_tflite_never_imports_tensorflow(exported):
  """label_image.py's whole run on a .tflite (its labels from the model, two
  photos, the int8 model's quantized input) on LiteRT and Pillow alone."""
  config = exported['int8']
  photos = _photos(config)[::20]
  script = (
      'import json, sys\n'
      'import label_image\n'
      'argv = ["label_image.py", "--graph", sys.argv[1], "--output_format", '
      '"json", "--image"] + sys.argv[2:]\n'
      'label_image.main(label_image.FLAGS(argv))\n'
      'print(json.dumps(sorted(m for m in sys.modules '
      'if m.split(".")[0] == "tensorflow")), file=sys.stderr)\n')
  done = subprocess.run(
      [sys.executable, '-c', script, config.output_tflite] + photos,
      cwd=ROOT, capture_output=True, text=True, timeout=120)
  assert done.returncode == 0, done.stderr
  assert json.loads(done.stderr) == []
  assert [item['predictions'][0]['label']
          for item in json.loads(done.stdout)] == COLOURS


@pytest.mark.parametrize('quantization', ['none', 'int8'])
def test_mediapipe_image_classifier_loads_the_tflite_alone(exported,
                                                           quantization):
  """MediaPipe Tasks, the Task Library's successor, with the .tflite and
  nothing else: it reads the normalization and the labels from the model."""
  mediapipe = pytest.importorskip('mediapipe')
  from mediapipe.tasks.python import vision
  from mediapipe.tasks.python.core.base_options import BaseOptions
  config = exported[quantization]
  options = vision.ImageClassifierOptions(
      base_options=BaseOptions(model_asset_path=config.output_tflite),
      max_results=1)
  photos = _photos(config)
  with vision.ImageClassifier.create_from_options(options) as classifier:
    found = [classifier.classify(mediapipe.Image.create_from_file(p))
             .classifications[0].categories[0].category_name for p in photos]
  assert found == [os.path.basename(os.path.dirname(p)) for p in photos]
