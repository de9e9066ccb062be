r"""Peak memory while making bottlenecks, at two (or more) folder sizes.

Images stream through the module in batches, so the peak should not grow
with the folder; only the bottlenecks kept for training do, 1,280 float32
values (5 KiB) an image, copied once more when stacked into the splits.
Each size is measured in a fresh child process that makes the bottlenecks of
a folder of the first --sizes photos of each class (24 and 120: 120 and 600
photos), into a fresh folder; the child's own peak resident memory comes from
os.wait4. Keep the smaller folder above about 100 photos: over the first few
batches the peak still rises, as TensorFlow's threads each take memory for a
batch once, and then it stays flat (35 photos: 1,050 MiB, 120: 1,110 MiB,
600: 1,121 MiB). So --quick measures the same sizes; TensorFlow's start-up
takes most of each child's time anyway.

  python bench/memory.py [--quick] [--sizes 24,120]
"""

import os
import sys
import tempfile

sys.path[0] = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

from absl import app  # noqa: E402
from absl import flags  # noqa: E402

from bench import common  # noqa: E402
from poets.core import bottlenecks  # noqa: E402
from poets.core import image_listing  # noqa: E402
from poets.core import modules  # noqa: E402

flags.DEFINE_list('sizes', ['24', '120'],
                  'Photos per class of the smaller and the larger folder.')
flags.DEFINE_string('bottleneck_dir', '', 'Set by the parent: make the '
                    "bottlenecks of --image_dir here, as the child it "
                    'measures, and nothing else.')
FLAGS = flags.FLAGS


def _make_bottlenecks():
  """The child's work: what retrain.py does up to the bottleneck cache."""
  spec = common.module_spec()
  image_lists = image_listing.create_image_lists(FLAGS.image_dir, 10, 10)
  bottlenecks.cache_bottlenecks(image_lists, modules.module_info(spec),
                                FLAGS.bottleneck_dir)


def main(argv):
  del argv
  common.start()
  if FLAGS.bottleneck_dir:
    _make_bottlenecks()
    return
  common.module_spec()  # built before any child runs
  print(f'Peak memory making bottlenecks, each in a fresh process; '
        f'{common.load()}')
  peaks = []
  with tempfile.TemporaryDirectory(prefix='bench_memory_') as work:
    for size in map(int, FLAGS.sizes):
      photos = common.subset(FLAGS.image_dir, size,
                             os.path.join(work, f'photos_{size}'))
      count = common.photo_count(photos)
      seconds, peak, code = common.run_child(
          [sys.executable, os.path.abspath(__file__), '--image_dir', photos,
           '--model_dir', FLAGS.model_dir, '--bottleneck_dir',
           os.path.join(work, f'bottlenecks_{size}')],
          os.path.join(work, f'log_{size}.txt'))
      if code:
        with open(os.path.join(work, f'log_{size}.txt')) as log:
          sys.exit(f'The child failed ({code}):\n{log.read()[-3000:]}')
      peaks.append((count, peak))
      print(f'{count:5d} images: peak {peak:7.1f} MiB  ({seconds:.1f} s)')
  (small, small_peak), (large, large_peak) = peaks[0], peaks[-1]
  print(f'growth: {large_peak - small_peak:+.1f} MiB for {large - small} more '
        f'images ({(large_peak - small_peak) * 1024 / (large - small):+.1f} '
        'KiB an image)')


if __name__ == '__main__':
  app.run(main)
