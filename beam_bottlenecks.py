r"""Makes retrain.py's bottleneck cache with Apache Beam, on one machine or many.

For photo folders too big for one machine: every image of --image_dir is run
through the module once by Beam workers, and its bottleneck is written where
retrain.py looks for it, in its format. Then retrain.py trains at once:

  python beam_bottlenecks.py --image_dir tf_files/flower_photos \
      --bottleneck_dir tf_files/bottlenecks
  python retrain.py --image_dir tf_files/flower_photos \
      --bottleneck_dir tf_files/bottlenecks      # "0 created", then training

Pass the same --architecture or --tfhub_module (and --model_dir) to both.
Sound cache files are kept: a rerun resumes, and files retrain.py made count
too. Images that cannot be decoded are skipped, listed in the log and in
<bottleneck_dir>/skipped_images_<module>.jsonl.

Every other flag is Beam's own and chooses the runner. The default is the
DirectRunner with one worker process per core (--direct_running_mode
multi_processing --direct_num_workers 0); a cluster runner takes its usual
options, e.g. --runner FlinkRunner --flink_master host:8081
--environment_type LOOPBACK. Workers must see --image_dir and
--bottleneck_dir at the same paths, and import this project (run from its
folder, or a worker image that has it; see README "Big folders").
"""

import functools
import sys

from absl import app
from absl import flags
from absl import logging

from poets import cli
from poets import settings
from poets import startup

DEFAULTS = settings.RetrainSettings()

cli.define_flags(DEFAULTS, {
    'image_dir': 'Folder with one sub-folder of labeled images per class.',
    'bottleneck_dir': 'Where retrain.py will look for the cached bottlenecks.',
})
cli.define_module_flags(DEFAULTS)
for _name in ('image_dir', 'bottleneck_dir'):
  flags.register_validator(_name, cli.is_path,
                           'must name a folder (not empty, no NUL)')
FLAGS = flags.FLAGS


def main(argv):
  startup.begin_script()  # Before anything imports TensorFlow.
  # pylint: disable=g-import-not-at-top
  from poets.core import modules
  try:
    from poets.extras import beam_pipeline
  except ImportError as e:
    sys.exit(f'ERROR: beam_bottlenecks.py needs Apache Beam ({e}): pip '
             'install -r requirements-beam.txt')
  logging.set_verbosity(logging.INFO)
  input_size = ((FLAGS.input_height, FLAGS.input_width)
                if FLAGS.input_height else None)
  with cli.one_line_errors():
    options = beam_pipeline.pipeline_options(argv[1:])
    spec = modules.resolve_module(FLAGS.architecture, FLAGS.tfhub_module,
                                  FLAGS.model_dir, input_size)
    # The workers are new processes: their TensorFlow start-up lines come
    # after ours were filtered, so the filter stays on for the whole run.
    with startup.without_library_lines():
      beam_pipeline.run(options, FLAGS.image_dir, FLAGS.bottleneck_dir, spec)


if __name__ == '__main__':
  app.run(main, flags_parser=functools.partial(cli.parse_flags_or_exit,
                                               known_only=True))
