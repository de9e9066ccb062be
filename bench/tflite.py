r"""TensorFlow Lite: size, accuracy and latency of the .pb and its .tflite.

Retrains the default network on the photo folder (seeded), then converts the
frozen graph three ways exactly as retrain.py --output_tflite does (int8
calibrated on the run's own training images) and puts the four side by side
on images none of them trained or calibrated on: the test split, and the
validation split held back as a second set. For each model: file size,
accuracy, top-1 agreement with the .pb and the largest probability
difference from it, and latency per image at batch 1 on 2 threads (the .pb
in a session limited to 2 intra-op threads, the .tflite files in LiteRT's
interpreter through the code label_image.py runs), timed in interleaved
rounds so that load from other work falls on all four alike; the median is
reported, with the CPU time of all its threads beside it. Targets: int8 at
most 1/3 of float's size, top-1 agreement with the .pb >= 97%, test
accuracy within 2 points of the .pb, int8 faster than the .pb at batch 1.

  python bench/tflite.py [--quick] [--steps 4000] [--rounds 3]
"""

import os
import sys
import tempfile
import time

sys.path[0] = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

from absl import app  # noqa: E402
from absl import flags  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from bench import common  # noqa: E402
from poets import pipeline  # noqa: E402
from poets import settings  # noqa: E402
from poets.core import export  # noqa: E402
from poets.core import frozen_graphs  # noqa: E402
from poets.core import graph_names  # noqa: E402
from poets.core import image_decoding  # noqa: E402
from poets.core import image_listing  # noqa: E402
from poets.core import modules  # noqa: E402
from poets.core import tflite_interpreter  # noqa: E402
from poets.extras import tflite_converter  # noqa: E402

flags.DEFINE_integer('steps', None,
                     'Training steps (default 4000; --quick: 200).')
flags.DEFINE_integer('rounds', None,
                     'Timing rounds over the held-back images (default 3; '
                     '--quick: 1).')
FLAGS = flags.FLAGS

THREADS = 2
OUTPUT = 'final_result'


def _retrain(image_dir, work, steps):
  run_settings = settings.RetrainSettings(
      image_dir=image_dir, output_graph=os.path.join(work, 'graph.pb'),
      output_labels=os.path.join(work, 'labels.txt'),
      bottleneck_dir=os.path.join(work, 'bottlenecks'),
      architecture=common.ARCHITECTURE, model_dir=FLAGS.model_dir,
      how_many_training_steps=steps, random_seed=0,
      summaries_dir=os.path.join(work, 'summaries'),
      checkpoint_path=os.path.join(work, 'checkpoint', 'retrain'))
  pipeline.run(run_settings)
  return run_settings


def _convert(graph_def, image_lists, work):
  """{quantization: (path, conversion seconds)}, as the export stage makes
  them: calibration on evenly spread training images."""
  training_paths = [image_lists.image_path(i, name)
                    for i, image_class in enumerate(image_lists.classes)
                    for name in image_class.training]
  models = {}
  for quantization in settings.QUANTIZATIONS:
    path = os.path.join(work, f'{quantization}.tflite')
    start = time.perf_counter()
    tflite_converter.save_model(
        tflite_converter.convert(
            graph_def, graph_names.INPUT_NAME, OUTPUT, quantization,
            tflite_converter.calibration_images(training_paths)), path)
    models[quantization] = path, time.perf_counter() - start
  return models


def _held_back(image_lists, size):
  """Test and validation images as label_image feeds them, with labels."""
  sets = {}
  for split in ('testing', 'validation'):
    pairs = [(image_lists.image_path(i, name), i)
             for i, image_class in enumerate(image_lists.classes)
             for name in image_class.split(split)]
    pixels = np.stack([
        image_decoding.decode_and_normalize(tf.io.read_file(path), *size, 0.0,
                                            255.0).numpy() for path, _ in pairs
    ])
    sets[split] = pixels, np.array([label for _, label in pairs])
  return sets


def _pb_classifier(graph_def):
  graph = export.import_frozen(graph_def)
  session = tf.compat.v1.Session(graph=graph, config=tf.compat.v1.ConfigProto(
      intra_op_parallelism_threads=THREADS, inter_op_parallelism_threads=1,
      device_count={'GPU': 0}))
  image = graph.get_tensor_by_name(f'{graph_names.INPUT_NAME}:0')
  scores = graph.get_tensor_by_name(f'{OUTPUT}:0')
  return lambda pixels: session.run(scores, {image: pixels})


def _tflite_classifier(path):
  with open(path, 'rb') as f:
    model = tflite_interpreter.load(f.read(),
                                    path,
                                    graph_names.INPUT_NAME,
                                    OUTPUT,
                                    num_threads=THREADS)
  return lambda pixels: tflite_interpreter.run(model, pixels)


def _measure(classifiers, pixels, rounds):
  """Scores of every image at batch 1, each model's median wall seconds per
  image and its median CPU seconds (all threads; less moved by other work
  on the machine), the models taking turns image by image in every round."""
  for classify in classifiers.values():
    classify(pixels[:1])  # First runs allocate and optimise: not timed.
  seconds = {name: [] for name in classifiers}
  cpu = {name: [] for name in classifiers}
  scores = {name: [None] * len(pixels) for name in classifiers}
  for _ in range(rounds):
    for index in range(len(pixels)):
      for name, classify in classifiers.items():
        start, cpu_start = time.perf_counter(), time.process_time()
        scores[name][index] = classify(pixels[index:index + 1])[0]
        seconds[name].append(time.perf_counter() - start)
        cpu[name].append(time.process_time() - cpu_start)
  return ({name: np.array(s) for name, s in scores.items()},
          {name: float(np.median(s)) for name, s in seconds.items()},
          {name: float(np.median(s)) for name, s in cpu.items()})


def main(argv):
  del argv
  common.start()
  steps = common.by_mode(FLAGS.steps, 200, 4000)
  rounds = common.by_mode(FLAGS.rounds, 1, 3)
  module = modules.module_info(common.module_spec())  # built before timing
  with tempfile.TemporaryDirectory(prefix='bench_tflite_') as work:
    image_dir = common.photos(work)
    run_settings = _retrain(image_dir, work, steps)
    image_lists = image_listing.create_image_lists(image_dir, 10, 10)
    graph_def = frozen_graphs.load_graph_def(run_settings.output_graph)
    converted = _convert(graph_def, image_lists, work)
    held_back = _held_back(image_lists, module.image_size)
    classifiers = {'.pb': _pb_classifier(graph_def)}
    classifiers.update({q: _tflite_classifier(path)
                        for q, (path, _) in converted.items()})
    files = {'.pb': run_settings.output_graph,
             **{q: path for q, (path, _) in converted.items()}}
    pixels = np.concatenate([held_back['testing'][0],
                             held_back['validation'][0]])
    truth = np.concatenate([held_back['testing'][1],
                            held_back['validation'][1]])
    tests = len(held_back['testing'][1])
    print(f'{steps} steps on {common.photo_count(image_dir)} photos; '
          f'held back: {tests} test + {len(truth) - tests} validation images; '
          f'batch 1, {THREADS} threads, {rounds} rounds; {common.load()}')
    scores, seconds, cpu = _measure(classifiers, pixels, rounds)
    sizes = {name: os.path.getsize(path) for name, path in files.items()}

  reference = scores['.pb']
  rows = []
  for name in classifiers:
    top1 = scores[name].argmax(1)
    rows.append([
        name if name == '.pb' else f'.tflite {name}',
        f'{sizes[name] / 1e6:.1f} MB',
        f'{(top1[:tests] == truth[:tests]).mean():.1%}',
        f'{(top1[tests:] == truth[tests:]).mean():.1%}',
        f'{(top1 == reference.argmax(1)).mean():.1%}',
        f'{np.abs(scores[name] - reference).max():.2g}',
        f'{seconds[name] * 1e3:.1f}', f'{cpu[name] * 1e3:.1f}',
        '' if name == '.pb' else f'{converted[name][1]:.1f}'])
  header = ['model', 'file', f'test accuracy (N={tests})',
            f'held-back accuracy (N={len(truth) - tests})',
            f'top-1 as .pb (N={len(truth)})', 'largest score change',
            'ms/image', 'CPU ms/image', 'convert s']
  print('| ' + ' | '.join(header) + ' |')
  print('|' + '---|' * len(header))
  for row in rows:
    print('| ' + ' | '.join(row) + ' |')

  pb_top1 = reference.argmax(1)
  pb_test = (pb_top1[:tests] == truth[:tests]).mean()
  worst_test = min((scores[q].argmax(1)[:tests] == truth[:tests]).mean()
                   for q in settings.QUANTIZATIONS)
  worst_agreement = min(
      (scores[q].argmax(1) == pb_top1).mean() for q in settings.QUANTIZATIONS)
  print(f"targets: int8/float size = {sizes['int8'] / sizes['none']:.2f} "
        f'(<= 0.33); lowest top-1 agreement with .pb = '
        f'{worst_agreement:.1%} (>= 97%); largest test accuracy drop = '
        f'{(pb_test - worst_test) * 100:.1f} points (<= 2); int8 latency = '
        f"{seconds['int8'] / seconds['.pb']:.2f}x .pb's (< 1)   "
        f'{common.load()}')


if __name__ == '__main__':
  app.run(main)
