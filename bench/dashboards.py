r"""TensorBoard dashboards: what writing them adds to a retrain run.

On a warm bottleneck cache (made by a first, untimed run), pipeline.run with
the README's settings (--how_many_training_steps 500), in this process,
alternately
  (a) as retrain.py runs it, writing the Projector, Images, PR curves and
      Text (poets/extras/dashboards.py), and
  (b) with dashboards.write_run left out,
--rounds times each, interleaved; the medians and their ratio, and the
seconds write_run itself took in (a). Then the size on disk of what a run
leaves in --summaries_dir (each event folder, the Projector's files), and
from the per-photo figures an estimate for the full flower_photos (3,670
photos: 734 validation and test photos and 500 training photos as points).
Target: (a) / (b) <= 1.05; nothing of it is needed to label images.

  python bench/dashboards.py [--quick] [--image_dir ...] [--rounds 3]
"""

import os
import statistics
import sys
import tempfile
import time
from unittest import mock

sys.path[0] = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

from absl import app  # noqa: E402
from absl import flags  # noqa: E402

from bench import common  # noqa: E402
from poets import pipeline  # noqa: E402
from poets import settings  # noqa: E402
from poets.extras import dashboards  # noqa: E402

SHIPPED = os.path.join(common.REPO_ROOT, 'tf_files', 'flower_photos')
FULL_PHOTOS = 3670
FULL_POINTS = 734 + dashboards.TRAINING_POINTS
flags.DEFINE_integer('rounds', None, 'Runs of each (default 3; --quick: 1).')
flags.DEFINE_integer('steps', None, 'Training steps (default 500, the '
                     "README's; --quick: 50).")
FLAGS = flags.FLAGS


def _size(path):
  """Bytes of the files under `path`."""
  return sum(os.path.getsize(os.path.join(folder, name))
             for folder, _, names in os.walk(path) for name in names)


def _config(image_dir, work, steps):
  return settings.RetrainSettings(
      image_dir=image_dir, architecture=common.ARCHITECTURE,
      model_dir=FLAGS.model_dir, how_many_training_steps=steps,
      bottleneck_dir=os.path.join(work, 'bottlenecks'),
      summaries_dir=os.path.join(work, 'summaries'),
      output_graph=os.path.join(work, 'retrained_graph.pb'),
      output_labels=os.path.join(work, 'retrained_labels.txt'),
      checkpoint_path=os.path.join(work, 'checkpoint', 'retrain'),
      random_seed=0)


def _measure(image_dir, work, steps, rounds):
  """Prints (a) against (b) on one photo folder; returns the sizes."""
  config = _config(image_dir, work, steps)
  pipeline.run(config)  # Warms the cache and this process; not timed.
  write_run = dashboards.write_run
  inside = []

  def timed_write_run(*args):
    start = time.perf_counter()
    write_run(*args)
    inside.append(time.perf_counter() - start)

  with_dashboards, without = [], []
  for _ in range(rounds):
    with mock.patch.object(dashboards, 'write_run', timed_write_run):
      with_dashboards.append(common.timed(lambda: pipeline.run(config))[0])
    with mock.patch.object(dashboards, 'write_run', lambda *args: None):
      without.append(common.timed(lambda: pipeline.run(config))[0])
  a, b = statistics.median(with_dashboards), statistics.median(without)
  written = statistics.median(inside)
  photos = common.photo_count(image_dir)
  print(f'{image_dir}: {photos} photos, {steps} steps, median of {rounds}')
  print(f'  (a) with dashboards    {a:6.2f} s   (write_run {written:.2f} s)')
  print(f'  (b) without            {b:6.2f} s')
  print(f'  a / b = {a / b:.3f}   write_run / a = {written / a:.1%}   '
        f'{common.load()}')
  summaries = config.summaries_dir
  sizes = {name: _size(os.path.join(summaries, name))
           for name in pipeline.RUN_FOLDERS}
  print('  on disk per run: ' + ', '.join(
      f'{name}/ {size / 1024:.0f} KiB' for name, size in sizes.items()) +
        f'; the dashboards\' {sum(sizes[n] for n in dashboards.RUN_FOLDERS) / 2**20:.2f} MiB')
  return written, sizes, _size(os.path.join(summaries, dashboards.PROJECTOR_RUN,
                                            dashboards.SPRITE))


def main(argv):
  del argv  # Unused.
  common.start()
  common.module_spec()
  rounds = common.by_mode(FLAGS.rounds, 1, 3)
  steps = common.by_mode(FLAGS.steps, 50, 500)
  with tempfile.TemporaryDirectory(prefix='bench-dashboards-') as work:
    folders = [SHIPPED, common.photos(work)] if os.path.isdir(SHIPPED) else [
        common.photos(work)]
    for index, image_dir in enumerate(folders):
      written, sizes, sprite = _measure(
          image_dir, os.path.join(work, str(index)), steps, rounds)
    # Scaled from the last folder: the Projector grows with its points, the
    # test folder with the test photos (its misclassified grid is capped).
    points = len(open(os.path.join(
        work, str(index), 'summaries', dashboards.PROJECTOR_RUN,
        dashboards.METADATA)).readlines()) - 1
    bottleneck_bytes = FULL_POINTS * 1280 * 4
    projector = bottleneck_bytes + sprite / points * FULL_POINTS
    print(f'3,670 photos (estimated from the last folder\'s {points} points):'
          f' {FULL_POINTS} points, Projector {projector / 2**20:.1f} MiB '
          f'(bottlenecks {bottleneck_bytes / 2**20:.1f} MiB), test/ about '
          f'{sizes[dashboards.TEST_RUN] / 1024:.0f} KiB; write_run about '
          f'{written / points * FULL_POINTS:.1f} s')


if __name__ == '__main__':
  app.run(main)
