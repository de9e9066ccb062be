r"""The codelab's second half: speed, size and agreement, side by side.

Retrains the default network on the photo folder (seeded; float .tflite,
then int8 from the same cached bottlenecks and seed), then measures in one
run:

1. label_image.py on one photo, whole process (start, load, label, exit),
   with the .tflite against the .pb: median of interleaved rounds.
   Target: the .tflite's time at most 0.5x the .pb's.
2. Labelling a folder (label_image's --image_dir path, in-process) against
   making the bottlenecks of the same photos with the same network (a fresh
   cache), photos per second. Target: labelling at least 0.9x.
3. quantize_graph --mode=weights_rounded: gzip size against the .pb's, and
   accuracy on the test split (scripts.evaluate's). Targets: at most 0.35x,
   within 1 point.
4. MediaPipe Tasks' ImageClassifier on the float and int8 .tflite, with
   nothing but the file: top-1 against label_image on the .pb, on the
   held-back photos (test and validation splits: neither trained nor
   calibrated on). Targets: float >= 97%, int8 >= 95%.

  python bench/second_half.py [--quick] [--steps 1000] [--rounds 3]
"""

import gzip
import os
import statistics
import sys
import tempfile
import time

sys.path[0] = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

from absl import app  # noqa: E402
from absl import flags  # noqa: E402

from bench import common  # noqa: E402
from poets import pipeline  # noqa: E402
from poets import settings  # noqa: E402
from poets.core import bottlenecks  # noqa: E402
from poets.core import export  # noqa: E402
from poets.core import frozen_graphs  # noqa: E402
from poets.core import image_listing  # noqa: E402
from poets.core import labeling  # noqa: E402
from poets.core import modules  # noqa: E402
from poets.extras import evaluation  # noqa: E402
from poets.extras import graph_tools  # noqa: E402

flags.DEFINE_integer('steps', None,
                     'Training steps (default 1000; --quick: 50).')
flags.DEFINE_integer('rounds', None,
                     'Whole-process rounds of label_image.py (default 3; '
                     '--quick: 1).')
FLAGS = flags.FLAGS


def _retrain(image_dir, work, steps):
  base = settings.RetrainSettings(
      image_dir=image_dir, bottleneck_dir=os.path.join(work, 'bottlenecks'),
      architecture=common.ARCHITECTURE, model_dir=FLAGS.model_dir,
      how_many_training_steps=steps, random_seed=0,
      summaries_dir=os.path.join(work, 'summaries'),
      checkpoint_path=os.path.join(work, 'checkpoint', 'c'))
  runs = {}
  for quantization in ('none', 'int8'):
    out = os.path.join(work, quantization)
    runs[quantization] = base.replace(
        output_graph=os.path.join(out, 'retrained_graph.pb'),
        output_labels=os.path.join(out, 'retrained_labels.txt'),
        output_tflite=os.path.join(out, 'optimized_graph.tflite'),
        tflite_quantization=quantization)
    pipeline.run(runs[quantization])
  return runs


def _process_seconds(graph, labels, photo, log):
  seconds, _, code = common.run_child(
      [sys.executable, 'label_image.py', f'--graph={graph}',
       f'--labels={labels}', f'--image={photo}'], log)
  assert code == 0, open(log).read()[-2000:]
  return seconds


def _single_photo(run, photo, work, rounds):
  times = {'pb': [], 'tflite': []}
  for _ in range(rounds):
    for kind, graph in (('pb', run.output_graph), ('tflite',
                                                   run.output_tflite)):
      times[kind].append(_process_seconds(
          graph, run.output_labels, photo,
          os.path.join(work, f'label_{kind}.log')))
  pb, lite = (statistics.median(times[k]) for k in ('pb', 'tflite'))
  print(f'1. label_image.py, one photo, whole process (median of {rounds}): '
        f'.pb {pb:.2f} s, .tflite {lite:.2f} s: {lite / pb:.2f}x '
        '(target <= 0.5x)')


def _folder(run, work):
  image_lists = image_listing.create_image_lists(run.image_dir, 10, 10)
  spec = modules.resolve_module(common.ARCHITECTURE, '', FLAGS.model_dir)
  module = modules.module_info(spec)
  start = time.perf_counter()
  _, cache = bottlenecks.cache_bottlenecks(
      image_lists, module, os.path.join(work, 'fresh_bottlenecks'))
  made = cache.created / (time.perf_counter() - start)
  start = time.perf_counter()
  labelled = len(labeling.label_images(settings.LabelConfig(
      graph=run.output_graph, labels=run.output_labels,
      image_dir=run.image_dir)).labelled)
  rate = labelled / (time.perf_counter() - start)
  print(f'2. A folder of {labelled} photos: bottlenecks {made:.1f} photos/s, '
        f'label_image --image_dir {rate:.1f} photos/s: {rate / made:.2f}x '
        '(target >= 0.9x)')


def _rounded(run, work):
  graph_def = frozen_graphs.load_graph_def(run.output_graph)
  rounded_path = os.path.join(work, 'rounded_graph.pb')
  export.save_graph(graph_tools.round_weights(graph_def, ['final_result']),
                    rounded_path)
  sizes = []
  for path in (run.output_graph, rounded_path):
    with open(path, 'rb') as f:
      sizes.append(len(gzip.compress(f.read())))
  config = settings.EvaluateConfig(
      models=[run.output_graph, rounded_path], image_dir=run.image_dir,
      labels=run.output_labels)
  photos, (pb, rounded) = evaluation.evaluate(config)
  size = os.path.getsize(run.output_graph)
  print(f'3. Rounded weights: gzip {sizes[1] / 1e6:.2f} MB = '
        f'{sizes[1] / size:.2f}x the .pb ({size / 1e6:.1f} MB; the .pb '
        f'gzipped: {sizes[0] / size:.2f}x) (target <= 0.35x); test accuracy '
        f'{pb.accuracy:.1%} -> {rounded.accuracy:.1%} on {len(photos.paths)} '
        f'photos ({(rounded.accuracy - pb.accuracy) * 100:+.1f} points, '
        'target within 1)')


def _held_back(run):
  image_lists = image_listing.create_image_lists(run.image_dir, 10, 10)
  return [image_lists.image_path(index, name)
          for index, image_class in enumerate(image_lists.classes)
          for split in ('testing', 'validation')
          for name in image_class.split(split)]


def _mediapipe(runs):
  # pylint: disable=g-import-not-at-top
  import mediapipe
  from mediapipe.tasks.python import vision
  from mediapipe.tasks.python.core.base_options import BaseOptions
  photos = _held_back(runs['none'])
  reference = [r.predictions[0].label for r in labeling.label_images(
      settings.LabelConfig(graph=runs['none'].output_graph,
                           labels=runs['none'].output_labels, images=photos,
                           top_k=1)).results]
  for quantization, target in (('none', 0.97), ('int8', 0.95)):
    options = vision.ImageClassifierOptions(base_options=BaseOptions(
        model_asset_path=runs[quantization].output_tflite), max_results=1)
    with vision.ImageClassifier.create_from_options(options) as classifier:
      found = [classifier.classify(mediapipe.Image.create_from_file(p))
               .classifications[0].categories[0].category_name for p in photos]
    same = sum(a == b for a, b in zip(found, reference)) / len(photos)
    print(f'4. MediaPipe ImageClassifier, {quantization} .tflite alone: '
          f'top-1 as label_image on the .pb for {same:.1%} of '
          f'{len(photos)} held-back photos (target >= {target:.0%})')


def main(_):
  common.start()
  with tempfile.TemporaryDirectory(prefix='second_half_') as work:
    image_dir = common.photos(work)
    runs = _retrain(image_dir, work, common.by_mode(FLAGS.steps, 50, 1000))
    print(f'load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores '
          '(shared machine: ratios hold better than absolute figures)')
    photo = _held_back(runs['none'])[0]
    _single_photo(runs['none'], photo, work,
                  common.by_mode(FLAGS.rounds, 1, 3))
    _folder(runs['none'], work)
    _rounded(runs['none'], work)
    _mediapipe(runs)


if __name__ == '__main__':
  app.run(main)
