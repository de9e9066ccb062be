r"""Bottleneck making: the original's way, ours, and the machine's limit.

Images per second over a folder of real photos with the default module:
  (a) the original retrain.py's way, reproduced here: per image one session
      run to decode and resize (its add_jpeg_decoding graph), one to run the
      module on a batch of 1, then the text file written and read back;
  (b) ours: bottlenecks.cache_bottlenecks into a fresh folder, everything
      included (loading the module, the tf.data pipeline, writing files);
  (c) the limit: the module alone on decoded, resized batches of
      graph_names.BATCH_SIZE held in memory.
(b) pays a fixed start-up (loading the module, building and optimising its
graph) that a small folder does not amortise, so it is also timed alone, on a
single photo, and (b)'s rate after it is printed too.
The three take turns for --rounds rounds and each keeps its best round, the
one least disturbed by other work; CPU milliseconds per image (all threads)
are printed beside, as they move less with the load. Targets: b >= 3x a,
b >= 0.8x c.

  python bench/bottlenecks.py [--quick] [--rounds 3] [--per_class 40]
"""

import dataclasses
import os
import sys
import tempfile

sys.path[0] = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

from absl import app  # noqa: E402
from absl import flags  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from bench import common  # noqa: E402
from poets.core import bottlenecks  # noqa: E402
from poets.core import graph_names  # noqa: E402
from poets.core import image_decoding  # noqa: E402
from poets.core import image_listing  # noqa: E402
from poets.core import modules  # noqa: E402

flags.DEFINE_integer('rounds', None, 'Turns of (c), (a), (b) (default 3; '
                     '--quick: 1).')
FLAGS = flags.FLAGS


def _original_graph(spec):
  """The original's graph: the module on a fed image, and its JPEG decoding."""
  graph = tf.Graph()
  with graph.as_default():
    module = modules.load_module(spec)
    height, width = module.image_size
    resized_input = tf.compat.v1.placeholder(tf.float32,
                                             [None, height, width, 3])
    bottleneck = module.apply(resized_input)
    jpeg_data = tf.compat.v1.placeholder(tf.string, name='DecodeJPGInput')
    decoded = tf.image.decode_jpeg(jpeg_data, channels=3)
    as_float = tf.image.convert_image_dtype(decoded, tf.float32)
    resized = tf.compat.v1.image.resize_bilinear(tf.expand_dims(as_float, 0),
                                                 [height, width])
    init = tf.compat.v1.global_variables_initializer()
  return graph, init, (jpeg_data, resized, resized_input, bottleneck)


def _original_bottleneck(session, ops, image_path, bottleneck_path):
  """The original's get_or_create_bottleneck for an image not yet cached."""
  jpeg_data, resized, resized_input, bottleneck = ops
  os.makedirs(os.path.dirname(bottleneck_path), exist_ok=True)
  with open(image_path, 'rb') as f:
    image_data = f.read()
  resized_values = session.run(resized, {jpeg_data: image_data})
  values = np.squeeze(session.run(bottleneck, {resized_input: resized_values}))
  with open(bottleneck_path, 'w') as f:
    f.write(','.join(str(x) for x in values))
  with open(bottleneck_path) as f:
    return [float(x) for x in f.read().split(',')]


def _decoded(image_paths, height, width):
  """All photos decoded and resized as ours does, as one array."""
  dataset = (tf.data.Dataset.from_tensor_slices(
      image_paths).map(lambda path: image_decoding.decode_and_resize(
          tf.io.read_file(path), height, width)).batch(len(image_paths)))
  return next(iter(dataset)).numpy()


def main(argv):
  del argv
  common.start()
  with tempfile.TemporaryDirectory(prefix='bench_bottlenecks_') as work:
    _measure(common.photos(work), work)


def _measure(image_dir, work):
  """Takes turns at (c), (a) and (b) and prints each one's best round."""
  spec = common.module_spec()
  module = modules.module_info(spec)
  image_lists = image_listing.create_image_lists(image_dir, 10, 10)
  # (class folder, image name, image path) of every photo, in cache order.
  photos = [(c.dir, name, image_lists.image_path(i, name))
            for i, c in enumerate(image_lists.classes)
            for split in image_listing.SPLITS
            for name in c.split(split)]
  count = len(photos)
  batch = graph_names.BATCH_SIZE
  pixels = _decoded([path for _, _, path in photos], *module.image_size)
  print(f'{count} photos in {FLAGS.image_dir}, module {spec.name}; '
        f'{common.load()}')

  graph, init, ops = _original_graph(spec)
  session = tf.compat.v1.Session(graph=graph)
  session.run(init)

  def original(round_dir):
    for class_dir, name, path in photos:
      _original_bottleneck(session, ops, path, bottlenecks.bottleneck_path(
          round_dir, class_dir, name, spec.name))

  def limit():
    for i in range(0, count, batch):
      session.run(ops[3], {ops[2]: pixels[i:i + batch]})

  def ours(lists, round_dir):
    bottlenecks.cache_bottlenecks(lists, module, round_dir)

  first = image_lists.classes[0]
  one_photo = dataclasses.replace(image_lists, classes=[dataclasses.replace(
      first, training=first.training[:1], testing=[], validation=[])])

  # The first runs of both graphs set up kernels; they are not timed.
  limit()
  original(os.path.join(work, 'warm_up'))
  times = {'a': [], 'b': [], 'c': [], 'start-up': []}
  for i in range(common.by_mode(FLAGS.rounds, 1, 3)):
    times['c'].append(common.timed(limit))
    times['a'].append(common.timed(
        lambda: original(os.path.join(work, f'original_{i}'))))
    times['b'].append(common.timed(
        lambda: ours(image_lists, os.path.join(work, f'ours_{i}'))))
    times['start-up'].append(common.timed(
        lambda: ours(one_photo, os.path.join(work, f'one_{i}'))))
  session.close()
  best = {k: min(wall for wall, _ in v) for k, v in times.items()}
  rate = {k: count / best[k] for k in 'abc'}
  cpu = {k: min(c for _, c in times[k]) / count * 1e3 for k in 'abc'}
  after_start = (count - 1) / (best['b'] - best['start-up'])
  for key, what in [('a', 'original, 2 session runs per image'),
                    ('b', 'ours, cache_bottlenecks'),
                    ('c', f'limit, module alone, batches of {batch}')]:
    print(f'({key}) {what:38s} {rate[key]:6.1f} images/s  '
          f'{cpu[key]:5.1f} CPU ms/image')
  print(f'    (b) on one photo: {best["start-up"]:.2f} s; after that '
        f'{after_start:.1f} images/s = {after_start / rate["c"]:.2f}x (c)')
  print(f'b/a = {rate["b"] / rate["a"]:.2f} (target >= 3; c/a = '
        f'{rate["c"] / rate["a"]:.2f} bounds it)   b/c = '
        f'{rate["b"] / rate["c"]:.2f} (target >= 0.8)   {common.load()}')


if __name__ == '__main__':
  app.run(main)
