r"""Fine-tuning the top blocks against training the last layer alone.

Accuracy: k-fold cross-validation on the photo folder (every photo is a
test photo exactly once; fold i holds each class's photos i, i+k, i+2k, ...
in name order, the same folds for every N), N=0 (the new layer alone)
against --fine_tune_blocks N for each N of --blocks, with retrain.py's
default training settings and --random_seed set to the fold. In this
process, on one bottleneck cache and one cut cache per N, so only training
is repeated. Also how far the float16 cut moves the features: the new
layer trained with N=0 labels every photo once from float32 bottlenecks
and once from bottlenecks computed through the float16 cut.

Time and memory: retrain.py as a user runs it, in fresh child processes,
N=0 against --fine_tune_blocks 2, with default flags: cold (empty cache),
then warm (the cache that run left), side by side. Targets: best N at least
2 points above N=0; cold N=2 at most 3x the cold N=0 wall time, warm at most
2x; peak memory at most 1.2x.

  python bench/fine_tune.py [--quick] [--folds 5] [--blocks 1,2,4]
"""

import os
import sys
import tempfile
import time

sys.path[0] = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

from absl import app  # noqa: E402
from absl import flags  # noqa: E402
from absl import logging  # noqa: E402
import numpy as np  # noqa: E402

from bench import common  # noqa: E402
from poets.core import bottlenecks  # noqa: E402
from poets.core import image_listing  # noqa: E402
from poets.core import modules  # noqa: E402
from poets import pipeline  # noqa: E402
from poets import settings as retrain_settings  # noqa: E402
from poets.core import cut_cache  # noqa: E402
from poets.core import fine_tuning  # noqa: E402

flags.DEFINE_integer('folds', None,
                     'Cross-validation folds (default 5; --quick: 2).')
flags.DEFINE_integer('run_folds', None, 'Run only the first this many folds '
                     '(default all), for a quicker look.')
flags.DEFINE_list('blocks', None, 'The --fine_tune_blocks values to compare '
                  'with 0 (default 1,2,4; --quick: 2).')
flags.DEFINE_integer('steps', None, 'Steps of the new layer alone (default '
                     "retrain.py's 4000; --quick: 100).")
flags.DEFINE_integer('fine_tune_steps', None, 'Steps of the blocks with the '
                     "layer (default retrain.py's; --quick: 2).")
flags.DEFINE_float('fine_tune_learning_rate', None,
                   "The blocks' learning rate (default retrain.py's).")
flags.DEFINE_bool('timing', True, 'Also time cold and warm retrain.py runs.')
FLAGS = flags.FLAGS
DEFAULTS = retrain_settings.RetrainSettings()


def _fold_lists(image_lists, fold, folds):
  """The image lists with fold `fold` as the test set and no validation
  set (nothing is chosen on it; the test set is the answer)."""
  classes = []
  for image_class in image_lists.classes:
    every = sorted(image_class.training + image_class.testing +
                   image_class.validation)
    classes.append(image_listing.ClassImages(
        label=image_class.label, dir=image_class.dir,
        training=[name for i, name in enumerate(every) if i % folds != fold],
        testing=every[fold::folds], validation=[]))
  return image_listing.ImageLists(image_lists.image_dir, classes)


def _accuracy(spec, module, image_lists, blocks, work):
  """Per-fold test accuracy of --fine_tune_blocks `blocks`, and the time."""
  config = DEFAULTS.replace(
      how_many_training_steps=common.by_mode(FLAGS.steps, 100,
                                             DEFAULTS.how_many_training_steps),
      fine_tune_blocks=blocks,
      fine_tune_steps=common.by_mode(FLAGS.fine_tune_steps, 2,
                                     DEFAULTS.fine_tune_steps),
      fine_tune_learning_rate=(FLAGS.fine_tune_learning_rate or
                               DEFAULTS.fine_tune_learning_rate),
      summaries_dir=os.path.join(work, f'summaries_{blocks}'),
      checkpoint_path=os.path.join(work, f'checkpoint_{blocks}', 'retrain'))
  cut = (fine_tuning.find_cut(common.ARCHITECTURE, '', blocks) if blocks
         else None)
  accuracies, outputs = [], []
  start = time.perf_counter()
  for fold in range(FLAGS.run_folds or FLAGS.folds):
    lists = _fold_lists(image_lists, fold, FLAGS.folds)
    cut_splits = None
    if cut:
      cut_splits, _ = cut_cache.cache_cuts(lists, module, cut,
                                           os.path.join(work, 'cache'))
      splits = fine_tuning.pretrained_bottlenecks(cut, cut_splits)
    else:
      splits, _ = bottlenecks.cache_bottlenecks(lists, module,
                                                os.path.join(work, 'cache'))
    result = pipeline.train(config.replace(random_seed=fold), lists.labels,
                            spec, module, splits, cut, cut_splits)
    accuracies.append(result.test.accuracy)
    outputs.append((splits, result.layer))
  return np.array(accuracies), time.perf_counter() - start, outputs


def _float16_effect(module, n0_outputs, cut_outputs):
  """How the features through the float16 cut differ from the float32
  ones, and whether the N=0 layer labels them alike."""
  differences, agree, total = [], 0, 0
  for (float32_splits, layer), (cut_splits, _) in zip(n0_outputs,
                                                      cut_outputs):
    weights = layer['final_retrain_ops/weights/final_weights']
    biases = layer['final_retrain_ops/biases/final_biases']
    exact = float32_splits['testing'].bottlenecks
    rounded = cut_splits['testing'].bottlenecks
    differences.append(np.abs(rounded - exact).max() / np.abs(exact).max())
    agree += int(np.sum(np.argmax(exact @ weights + biases, 1) ==
                        np.argmax(rounded @ weights + biases, 1)))
    total += len(exact)
  del module
  return max(differences), agree, total


def _timing(image_dir, work):
  runs = {}
  for cache in ('cold', 'warm'):
    for blocks in (0, 2):
      name = f'{cache}_n{blocks}'
      seconds, peak, measured = common.retrain_in_child(
          ['--image_dir', image_dir,
           '--bottleneck_dir', os.path.join(work, f'timing_cache_{blocks}'),
           '--model_dir', FLAGS.model_dir, '--random_seed', '0',
           '--fine_tune_blocks', str(blocks), '--fine_tune_steps',
           str(common.by_mode(FLAGS.fine_tune_steps, 2,
                              DEFAULTS.fine_tune_steps))] +
          (['--how_many_training_steps', '100'] if FLAGS.quick else []),
          work, name)
      peak = measured['own_peak_mib'] or peak
      runs[name] = (seconds, peak, measured)
      print(f'  {cache} --fine_tune_blocks {blocks}: {seconds:6.1f} s '
            f'(cut cache/bottlenecks {measured["bottlenecks"]:5.1f} s, '
            f'training {measured["training"]:5.1f} s, rest '
            f'{seconds - measured["bottlenecks"] - measured["training"]:5.1f}'
            f' s), peak {peak:6.0f} MiB, test accuracy '
            f'{measured["accuracy"]:.1%}   {common.load()}')
  for cache, limit in (('cold', 3), ('warm', 2)):
    ratio = runs[f'{cache}_n2'][0] / runs[f'{cache}_n0'][0]
    print(f'  {cache}: N=2 takes {ratio:.2f}x the time of N=0 (target '
          f'<= {limit}x)')
  ratio = max(runs['cold_n2'][1], runs['warm_n2'][1]) / max(
      runs['cold_n0'][1], runs['warm_n0'][1])
  print(f'  peak memory: N=2 {ratio:.2f}x N=0 (target <= 1.2x)')


def main(argv):
  del argv
  common.start()
  # Each fold has no validation set, which training warns about.
  logging.set_verbosity(logging.ERROR)
  spec = common.module_spec()
  module = modules.module_info(spec)
  blocks = [int(b) for b in common.by_mode(FLAGS.blocks, ['2'],
                                            ['1', '2', '4'])]
  FLAGS.folds = common.by_mode(FLAGS.folds, 2, 5)
  with tempfile.TemporaryDirectory(prefix='bench_fine_tune_') as work:
    image_dir = common.photos(work)
    image_lists = image_listing.create_image_lists(image_dir, 0, 0)
    print(f'{FLAGS.folds}-fold cross-validation on '
          f'{common.photo_count(image_dir)} photos; {common.load()}')
    print(f'{"N":>3}  {"mean":>6}  {"sd":>5}  {"min":>6}  {"max":>6}  '
          f'{"vs N=0":>7}  {"seconds":>7}  per fold')
    baseline = None
    for n in [0] + blocks:
      accuracies, seconds, outputs = _accuracy(spec, module, image_lists, n,
                                               work)
      if baseline is None:
        baseline, n0_outputs = accuracies, outputs
      elif n == blocks[0]:
        difference, agree, total = _float16_effect(module, n0_outputs,
                                                   outputs)
      print(f'{n:>3}  {accuracies.mean():6.1%}  {accuracies.std():5.1%}  '
            f'{accuracies.min():6.1%}  {accuracies.max():6.1%}  '
            f'{(accuracies.mean() - baseline.mean()) * 100:+6.1f}p  '
            f'{seconds:7.0f}  '
            + ' '.join(f'{a:.1%}' for a in accuracies), flush=True)
    print(f'float16 cut: features within {difference:.2%} of the largest '
          f'float32 feature; the N=0 layer labels {agree} of {total} test '
          'photos the same from both')
    if FLAGS.timing:
      print(f'retrain.py on {common.photo_count(image_dir)} photos, side by '
            'side:')
      _timing(image_dir, work)
  print(f'targets: best N >= +2 points over N=0; cold <= 3x, warm <= 2x, '
        f'peak <= 1.2x   {common.load()}')


if __name__ == '__main__':
  app.run(main)
