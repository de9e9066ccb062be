r"""retrain.py end to end: cold and warm bottleneck cache, time and memory.

Runs `retrain.py` on the photo folder as a user would, each run in a fresh
child process: first with an empty bottleneck folder (cold), then again on
the cache that run left (warm). The module is built beforehand, as it is
after a user's first run. For each run: wall seconds, the child's peak
resident memory (os.wait4), the final test accuracy from its log, and where
the time went by the log's timestamps. TensorFlow's own start-up is timed
apart, as a child that only imports tensorflow and tensorflow_hub.
Targets on the 600-photo sample: warm run under 20 s, peak under 2 GB.

  python bench/end_to_end.py [--quick] [--steps 4000]
"""

import datetime
import os
import re
import sys
import tempfile
import time

sys.path[0] = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

from absl import app  # noqa: E402
from absl import flags  # noqa: E402

from bench import common  # noqa: E402

flags.DEFINE_integer('steps', None,
                     'Training steps (default 4000; --quick: 200).')
FLAGS = flags.FLAGS

# The first log line of each stage of pipeline.run, in order; a stage lasts
# until the next one's line (the last until the process ends).
_STAGES = [
    ('start-up', None),
    ('load module', re.compile(r"Looking for images in '")),
    ('bottlenecks', re.compile(r'Module \S+: \d+x\d+ images')),
    ('training', re.compile(r'Using \d+ images')),
    ('export', re.compile(r'Final test accuracy')),
    ('exit', re.compile(r'Saved ')),
]
_LOG_TIME = re.compile(r'^[IWE]\d{4} (\d\d):(\d\d):(\d\d\.\d+) ')
_ACCURACY = re.compile(r'Final test accuracy = ([\d.]+)% \(N=(\d+)\)')


def _stage_seconds(log_text, started, ended):
  """Seconds of each stage, from the first timestamped line of each."""
  day = datetime.datetime.fromtimestamp(started).replace(
      hour=0, minute=0, second=0, microsecond=0).timestamp()
  starts = [started]
  for _, marker in _STAGES[1:]:
    for line in log_text.splitlines():
      stamp = _LOG_TIME.match(line)
      if stamp and marker.search(line):
        hours, minutes, seconds = stamp.groups()
        starts.append(day + int(hours) * 3600 + int(minutes) * 60 +
                      float(seconds))
        break
    else:
      return None  # a stage's line changed; the total still stands
  return [end - start for start, end in zip(starts, starts[1:] + [ended])]


def _retrain(image_dir, work, name, steps):
  """One retrain.py run; returns (seconds, peak MiB, stage seconds, result)."""
  out = os.path.join(work, name)
  command = [
      sys.executable, 'retrain.py', '--image_dir', image_dir,
      '--bottleneck_dir', os.path.join(work, 'bottlenecks'),
      '--model_dir', FLAGS.model_dir,
      '--how_many_training_steps', str(steps), '--random_seed', '0',
      '--summaries_dir', os.path.join(out, 'summaries'),
      '--output_graph', os.path.join(out, 'retrained_graph.pb'),
      '--output_labels', os.path.join(out, 'retrained_labels.txt'),
      '--checkpoint_path', os.path.join(out, 'checkpoint', 'retrain'),
      '--intermediate_output_graphs_dir', os.path.join(out, 'intermediate')]
  log_path = os.path.join(work, f'{name}.log')
  started = time.time()
  seconds, peak, code = common.run_child(command, log_path)
  with open(log_path) as f:
    log_text = f.read()
  if code:
    sys.exit(f'retrain.py failed ({code}):\n{log_text[-3000:]}')
  accuracy = _ACCURACY.search(log_text)
  result = (f'test accuracy {accuracy[1]}% (N={accuracy[2]})' if accuracy
            else 'no final test accuracy in the log')
  return seconds, peak, _stage_seconds(log_text, started,
                                       started + seconds), result


def main(argv):
  del argv
  common.start()
  steps = common.by_mode(FLAGS.steps, 200, 4000)
  common.module_spec()  # built before anything is timed
  with tempfile.TemporaryDirectory(prefix='bench_end_to_end_') as work:
    image_dir = common.photos(work)
    print(f'retrain.py on {common.photo_count(image_dir)} photos, {steps} '
          f'steps; {common.load()}')
    seconds, peak, _ = common.run_child(
        [sys.executable, '-c', 'import tensorflow, tensorflow_hub'],
        os.path.join(work, 'import.log'))
    print(f'import tensorflow, tensorflow_hub alone: {seconds:5.1f} s, '
          f'peak {peak:6.0f} MiB')
    for name in ('cold', 'warm'):
      seconds, peak, stages, result = _retrain(image_dir, work, name, steps)
      print(f'{name} cache: {seconds:5.1f} s, peak {peak:6.0f} MiB, {result}')
      if stages:
        print('    ' + ', '.join(f'{stage} {s:.1f} s' for (stage, _), s in
                                  zip(_STAGES, stages)))
  print(f'targets: warm run < 20 s, peak < 2048 MiB   {common.load()}')


if __name__ == '__main__':
  app.run(main)
