r"""TensorBoard dashboards: what writing them adds to a retrain run.

On a warm bottleneck cache (made by a first, untimed run), with the README's
settings (--how_many_training_steps 500), alternately
  (a) as retrain.py runs, writing the Projector, Images, PR curves and Text
      (poets/extras/dashboards.py), and
  (b) with dashboards.write_run left out,
--rounds times each, interleaved, two ways: the whole `retrain.py` command
a user types, each run a fresh child (start-up included), and pipeline.run
in this process (the stricter ratio: no start-up); the medians, their
ratios, and the seconds write_run itself took. Then the size on disk of what a run
leaves in --summaries_dir (each event folder, the Projector's files), and
the Projector's files for the full flower_photos (3,670 photos: 734
validation and test photos and 500 training photos as points), written from
the folder's photos repeated.
With --fine_tune_blocks N every run fine-tunes the top N blocks too
(retrain.py's default --fine_tune_steps; --quick: 2), so write_run also runs
the Projector's photos through the fine-tuned blocks for its second tensor,
and the full flower_photos' Projector holds both tensors.
Target: (a) / (b) <= 1.05; nothing of it is needed to label images.

  python bench/dashboards.py [--quick] [--image_dir ...] [--rounds 3]
      [--fine_tune_blocks 2]
"""

import glob
import os
import resource
import statistics
import sys
import tempfile
import time
from unittest import mock

sys.path[0] = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

from absl import app  # noqa: E402
from absl import flags  # noqa: E402
import numpy as np  # noqa: E402

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
flags.DEFINE_integer('fine_tune_blocks', 0, 'Fine-tune this many top blocks '
                     'in every run (retrain.py --fine_tune_blocks); 0 = none.')
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
      fine_tune_blocks=FLAGS.fine_tune_blocks,
      fine_tune_steps=common.by_mode(
          None, 2, settings.RetrainSettings.fine_tune_steps),
      random_seed=0)


# retrain.py in a child, with dashboards.write_run left out if argv[1] says.
_RETRAIN_CHILD = """
import sys
from unittest import mock
from absl import flags
import retrain
from poets import pipeline
from poets.extras import dashboards
flags.FLAGS(['retrain.py'] + sys.argv[2:])
with mock.patch.object(dashboards, 'write_run', dashboards.write_run
                       if sys.argv[1] == 'with' else lambda *args: None):
  pipeline.run(retrain.settings_from_flags())
"""


def _children_cpu():
  usage = resource.getrusage(resource.RUSAGE_CHILDREN)
  return usage.ru_utime + usage.ru_stime


def _whole_commands(config, rounds):
  """Median (wall, CPU) seconds of retrain.py (a) with and (b) without, each
  in a fresh child."""
  flag_args = [f'--{name}={value}' for name, value in (
      ('image_dir', config.image_dir), ('architecture', config.architecture),
      ('model_dir', config.model_dir),
      ('how_many_training_steps', config.how_many_training_steps),
      ('bottleneck_dir', config.bottleneck_dir),
      ('summaries_dir', config.summaries_dir + '_children'),
      ('output_graph', config.output_graph),
      ('output_labels', config.output_labels),
      ('checkpoint_path', config.checkpoint_path),
      ('fine_tune_blocks', config.fine_tune_blocks),
      ('fine_tune_steps', config.fine_tune_steps), ('random_seed', 0))]
  log = config.summaries_dir + '_child.log'
  times = {'with': [], 'without': []}
  for _ in range(rounds):
    for variant in ('without', 'with'):
      cpu = _children_cpu()
      seconds, _, code = common.run_child(
          [sys.executable, '-c', _RETRAIN_CHILD, variant, *flag_args], log)
      if code:
        with open(log) as f:
          sys.exit(f'retrain.py failed ({code}):\n{f.read()[-3000:]}')
      times[variant].append((seconds, _children_cpu() - cpu))
  return [[statistics.median(column) for column in zip(*times[variant])]
          for variant in ('with', 'without')]


def _measure(image_dir, work, steps, rounds):
  """Prints (a) against (b) on one photo folder; returns the sizes."""
  config = _config(image_dir, work, steps)
  pipeline.run(config)  # Warms the cache and this process; not timed.
  write_run = dashboards.write_run
  inside = []

  def timed_write_run(*args):
    inside.append(common.timed(lambda: write_run(*args)))

  with_dashboards, without = [], []
  for _ in range(rounds):
    # (a) last, so its folders are the ones measured on disk below.
    with mock.patch.object(dashboards, 'write_run', lambda *args: None):
      without.append(common.timed(lambda: pipeline.run(config)))
    with mock.patch.object(dashboards, 'write_run', timed_write_run):
      with_dashboards.append(common.timed(lambda: pipeline.run(config)))
  (a, a_cpu), (b, b_cpu), (written, written_cpu) = [
      [statistics.median(times) for times in zip(*runs)]
      for runs in (with_dashboards, without, inside)]
  photos = common.photo_count(image_dir)
  fine_tuned = (f', then {config.fine_tune_steps} steps of the top '
                f'{config.fine_tune_blocks} blocks' if config.fine_tune_blocks
                else '')
  print(f'{image_dir}: {photos} photos, {steps} steps{fine_tuned}, median of '
        f'{rounds}, wall (CPU) seconds')
  print('  pipeline.run in this process:')
  print(f'  (a) with dashboards  {a:6.2f} ({a_cpu:5.2f})   write_run '
        f'{written:.2f} ({written_cpu:.2f})')
  print(f'  (b) without          {b:6.2f} ({b_cpu:5.2f})')
  print(f'  a / b = {a / b:.3f} wall, {a_cpu / b_cpu:.3f} CPU;  write_run / '
        f'a = {written / a:.1%} wall, {written_cpu / a_cpu:.1%} CPU;  '
        f'{common.load()}')
  (a, a_cpu), (b, b_cpu) = _whole_commands(config, rounds)
  print(f'  retrain.py, whole command: (a) {a:.2f} ({a_cpu:.2f}), (b) {b:.2f} '
        f'({b_cpu:.2f});  a / b = {a / b:.3f} wall, {a_cpu / b_cpu:.3f} CPU;'
        f'  {common.load()}')
  summaries = config.summaries_dir
  sizes = {name: _size(os.path.join(summaries, name))
           for name in pipeline.RUN_FOLDERS}
  ours = sum(sizes[name] for name in dashboards.RUN_FOLDERS)
  print('  on disk per run: ' + ', '.join(
      f'{name}/ {size / 1024:.0f} KiB' for name, size in sizes.items()) +
        f'; the dashboards\' {ours / 2**20:.2f} MiB')



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
      _measure(image_dir, os.path.join(work, str(index)), steps, rounds)
    _full_projector(folders[-1], os.path.join(work, 'full'))


def _full_projector(image_dir, work):
  """The Projector's files for 3,670 photos' worth of points, measured: the
  folder's photos over and over, with random 1,280-value bottlenecks (and
  fine-tuned features, with --fine_tune_blocks)."""
  paths = sorted(glob.glob(os.path.join(image_dir, '*', '*.jpg')))
  points = [paths[i % len(paths)] for i in range(FULL_POINTS)]
  sample = dashboards.ProjectorSample({}, ['flower'] * FULL_POINTS,
                                      ['testing'] * FULL_POINTS, points)
  rng = np.random.default_rng(0)
  names = [dashboards.PRETRAINED] + (
      [dashboards.FINE_TUNED] if FLAGS.fine_tune_blocks else [])
  embeddings = {name: rng.random([FULL_POINTS, 1280], np.float32)
                for name in names}
  # A cold sprite cache: the run that first sees these photos.
  wall, cpu = common.timed(lambda: dashboards.write_projector(
      os.path.join(work, 'projector'), sample, embeddings,
      os.path.join(work, 'sprites')))
  print(f'3,670 photos: {FULL_POINTS} points (734 validation and test, '
        f'{dashboards.TRAINING_POINTS} training), {" and ".join(names)}; '
        'the Projector\'s files '
        f'{_size(os.path.join(work, "projector")) / 2**20:.1f} MiB, '
        f'written (sprite made, not cached) in {wall:.2f} s '
        f'({cpu:.2f} s CPU)  {common.load()}')


if __name__ == '__main__':
  app.run(main)
