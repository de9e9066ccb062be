r"""Training: the original's per-step file reads against our in-graph batches.

With a warm bottleneck cache (made first, not timed), the seconds for N
training steps with evaluation every --eval_step_interval steps:
  (a) the original retrain.py's loop, reproduced here: each step samples
      --train_batch_size (class, image) pairs, reads and parses each one's
      bottleneck text file and feeds them to a session run of the train step
      and the merged summaries; each evaluation adds the accuracy run and a
      validation batch read from files the same way;
  (b) ours: training.train, sampling in the graph from bottlenecks held in
      memory.
Both include the final test and the checkpoint. Targets: b >= 20x a, and
4,000 steps with evaluation in under 15 s.

  python bench/training.py [--quick] [--steps 4000] [--original_steps 500]
"""

import os
import random
import sys
import tempfile
import time

sys.path[0] = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

from absl import app  # noqa: E402
from absl import flags  # noqa: E402
import tensorflow as tf  # noqa: E402

from bench import common  # noqa: E402
from poets import settings  # noqa: E402
from poets.core import bottlenecks  # noqa: E402
from poets.core import final_layer  # noqa: E402
from poets.core import image_listing  # noqa: E402
from poets.core import modules  # noqa: E402
from poets.core import training  # noqa: E402

DEFAULTS = settings.RetrainSettings()
flags.DEFINE_integer('steps', None, 'Training steps of each (default '
                     f'{DEFAULTS.how_many_training_steps}; --quick: 200).')
flags.DEFINE_integer('original_steps', None,
                     'Steps to time (a) on, extrapolated to --steps when '
                     'fewer (default 500; --quick: 50).')
FLAGS = flags.FLAGS


def _original_batch(image_lists, split, how_many, bottleneck_dir,
                    module_name, rng):
  """The original's get_random_cached_bottlenecks: a file read per image.

  A class is drawn uniformly among those with images in the split (the
  original drew among all and failed on an empty one), then an image of it
  by the original's modulo rule; -1 takes the whole split.
  """
  classes = [i for i, c in enumerate(image_lists.classes) if c.split(split)]
  if how_many < 0:
    chosen = [(i, name) for i in classes
              for name in image_lists.classes[i].split(split)]
  else:
    chosen = []
    for _ in range(how_many):
      label_index = rng.choice(classes)
      names = image_lists.classes[label_index].split(split)
      chosen.append(
          (label_index,
           names[rng.randrange(image_listing.MAX_NUM_IMAGES_PER_CLASS + 1) %
                 len(names)]))
  values, ground_truths = [], []
  for label_index, name in chosen:
    class_dir = image_lists.classes[label_index].dir
    sub_dir = os.path.join(bottleneck_dir, class_dir)
    if not os.path.exists(sub_dir):
      os.makedirs(sub_dir)
    path = bottlenecks.bottleneck_path(bottleneck_dir, class_dir, name,
                                       module_name)
    if not os.path.exists(path):
      raise FileNotFoundError(path)
    with open(path) as f:
      values.append([float(x) for x in f.read().split(',')])
    ground_truths.append(label_index)
  return values, ground_truths


def _original_training(image_lists, bottleneck_dir, module, steps, work):
  """The original's training loop; returns its final test accuracy."""
  config = settings.RetrainSettings()
  with tf.Graph().as_default() as graph:
    layer = final_layer.add_final_retrain_ops(
        len(image_lists.classes), config.final_tensor_name,
        tf.zeros([1, module.bottleneck_size]), None, config.learning_rate)
    merged = tf.compat.v1.summary.merge_all()
    train_writer = tf.compat.v1.summary.FileWriter(
        os.path.join(work, 'train'), graph)
    validation_writer = tf.compat.v1.summary.FileWriter(
        os.path.join(work, 'validation'))
    saver = tf.compat.v1.train.Saver()
    init = tf.compat.v1.global_variables_initializer()
  rng = random.Random(0)

  def batch(split, how_many):
    values, truth = _original_batch(image_lists, split, how_many,
                                    bottleneck_dir, module.spec.name, rng)
    return {layer.bottleneck_input: values, layer.ground_truth_input: truth}

  with tf.compat.v1.Session(graph=graph) as session:
    session.run(init)
    for step in range(steps):
      feed = batch('training', config.train_batch_size)
      summary, _ = session.run([merged, layer.train_step], feed)
      train_writer.add_summary(summary, step)
      if step % config.eval_step_interval == 0 or step + 1 == steps:
        session.run([layer.evaluation_step, layer.cross_entropy], feed)
        summary, _ = session.run(
            [merged, layer.evaluation_step],
            batch('validation', config.validation_batch_size))
        validation_writer.add_summary(summary, step)
    saver.save(session, os.path.join(work, 'retrain_checkpoint'))
    accuracy = session.run(layer.evaluation_step,
                           batch('testing', config.test_batch_size))
  train_writer.close()
  validation_writer.close()
  return accuracy


def main(argv):
  del argv
  common.start()
  steps = common.by_mode(FLAGS.steps, 200, DEFAULTS.how_many_training_steps)
  original_steps = min(steps, common.by_mode(FLAGS.original_steps, 50, 500))
  with tempfile.TemporaryDirectory(prefix='bench_training_') as work:
    image_dir = common.photos(work)
    spec = common.module_spec()
    module = modules.module_info(spec)
    image_lists = image_listing.create_image_lists(image_dir, 10, 10)
    bottleneck_dir = os.path.join(work, 'bottlenecks')
    splits, _ = bottlenecks.cache_bottlenecks(image_lists, module,
                                              bottleneck_dir)
    print(f'{sum(len(s.ground_truth) for s in splits.values())} cached '
          f'bottlenecks ({len(splits["training"].ground_truth)} training); '
          f'{steps} steps, batch {DEFAULTS.train_batch_size}, evaluation every '
          f'{DEFAULTS.eval_step_interval}; {common.load()}')

    start = time.perf_counter()
    original_accuracy = _original_training(
        image_lists, bottleneck_dir, module, original_steps,
        os.path.join(work, 'original'))
    original = (time.perf_counter() - start) * steps / original_steps

    config = settings.RetrainSettings(
        how_many_training_steps=steps, random_seed=0,
        summaries_dir=os.path.join(work, 'summaries'),
        checkpoint_path=os.path.join(work, 'checkpoint', 'retrain'))
    start = time.perf_counter()
    result = training.train(config, splits, image_lists.labels)
    ours = time.perf_counter() - start

  how = (f'extrapolated from {original_steps} steps'
         if original_steps < steps else f'all {steps} steps')
  print(f'(a) original, file reads every step: {original:7.2f} s '
        f'({original / steps * 1e3:.2f} ms/step, {how}; '
        f'test accuracy {original_accuracy:.1%} after {original_steps} steps)')
  print(f'(b) ours, training.train:            {ours:7.2f} s '
        f'({ours / steps * 1e3:.2f} ms/step; test accuracy '
        f'{result.test.accuracy:.1%})')
  print(f"speed b/a = {original / ours:.1f} (a's seconds / b's; target >= 20)"
        f'   {steps} steps in {ours:.1f} s (target < 15 s for 4000)   '
        f'{common.load()}')


if __name__ == '__main__':
  app.run(main)
