r"""retrain.py end to end: cold and warm bottleneck cache, time and memory.

Runs retrain on the photo folder as a user would, each run in a fresh
child process: first with an empty bottleneck folder (cold), then again on
the cache that run left (warm). The module is built beforehand, as it is
after a user's first run. For each run: wall seconds, the child's peak
resident memory (os.wait4), the final test accuracy, and where the time went,
from the pipeline's own RunResult (the child is retrain.py's flags and
pipeline.run, with the result written out). TensorFlow's own start-up is timed
apart, as a child that only imports tensorflow and tensorflow_hub: with
TF_USE_LEGACY_KERAS=1, as the scripts import it (tf.keras is then
tensorflow_hub's tf_keras), against =0 (TensorFlow also loads Keras 3),
interleaved rounds, the median wall and CPU seconds of each and their ratio.
Targets on the 600-photo sample: warm run under 20 s, peak under 2 GB.

  python bench/end_to_end.py [--quick] [--steps 4000]
"""

import os
import resource
import statistics
import sys
import tempfile

sys.path[0] = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

from absl import app  # noqa: E402
from absl import flags  # noqa: E402

from bench import common  # noqa: E402

flags.DEFINE_integer('steps', None,
                     'Training steps (default 4000; --quick: 200).')
FLAGS = flags.FLAGS


def _retrain(image_dir, work, name, steps):
  """One retrain run; returns (seconds, peak MiB, stage seconds, result)."""
  seconds, peak, measured = common.retrain_in_child(
      ['--image_dir', image_dir,
       '--bottleneck_dir', os.path.join(work, 'bottlenecks'),
       '--model_dir', FLAGS.model_dir,
       '--how_many_training_steps', str(steps), '--random_seed', '0'],
      work, name)
  stages = {stage: measured[stage] for stage in
            ('start-up', 'bottlenecks', 'training', 'export')}
  stages['other pipeline work'] = measured['pipeline'] - sum(
      measured[stage] for stage in ('bottlenecks', 'training', 'export'))
  stages['exit'] = seconds - measured['start-up'] - measured['pipeline']
  result = (f'test accuracy {measured["accuracy"]:.1%} '
            f'(N={measured["test_images"]})')
  return seconds, peak, stages, result


def _child_cpu():
  usage = resource.getrusage(resource.RUSAGE_CHILDREN)
  return usage.ru_utime + usage.ru_stime


def _start_up(work, rounds):
  """Prints `import tensorflow, tensorflow_hub` in a child, with one Keras
  against two: median wall and CPU seconds and their ratios."""
  times = {'1': [], '0': []}
  for _ in range(rounds):
    for legacy, runs in times.items():
      cpu = _child_cpu()
      seconds, _, _ = common.run_child(
          [sys.executable, '-c', 'import tensorflow, tensorflow_hub'],
          os.path.join(work, 'import.log'),
          env={**os.environ, 'TF_USE_LEGACY_KERAS': legacy})
      runs.append((seconds, _child_cpu() - cpu))
  medians = {legacy: [statistics.median(run[i] for run in runs)
                      for i in range(2)]
             for legacy, runs in times.items()}
  for legacy, (seconds, cpu) in medians.items():
    print(f'import tensorflow, tensorflow_hub, TF_USE_LEGACY_KERAS={legacy}: '
          f'{seconds:5.2f} s, CPU {cpu:5.2f} s (median of {rounds})')
  (one_wall, one_cpu), (two_wall, two_cpu) = medians['1'], medians['0']
  print(f'one Keras against two: {one_wall / two_wall:.2f}x the wall time, '
        f'{one_cpu / two_cpu:.2f}x the CPU')


def main(argv):
  del argv
  common.start()
  steps = common.by_mode(FLAGS.steps, 200, 4000)
  common.module_spec()  # built before anything is timed
  with tempfile.TemporaryDirectory(prefix='bench_end_to_end_') as work:
    image_dir = common.photos(work)
    print(f'retrain.py on {common.photo_count(image_dir)} photos, {steps} '
          f'steps; {common.load()}')
    _start_up(work, rounds=common.by_mode(None, 1, 5))
    for name in ('cold', 'warm'):
      seconds, peak, stages, result = _retrain(image_dir, work, name, steps)
      print(f'{name} cache: {seconds:5.1f} s, peak {peak:6.0f} MiB, {result}')
      print('    ' + ', '.join(f'{stage} {s:.1f} s'
                               for stage, s in stages.items()))
  print(f'targets: warm run < 20 s, peak < 2048 MiB   {common.load()}')


if __name__ == '__main__':
  app.run(main)
