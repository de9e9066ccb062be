r"""Retrains the last layer of an image network on your own photos.

This is the TensorFlow for Poets codelab's retrain.py, rebuilt on today's
TensorFlow. Point it at a folder with one sub-folder of images per class:

  tf_files/flower_photos/daisy/photo1.jpg
  tf_files/flower_photos/daisy/photo2.jpg
  tf_files/flower_photos/roses/anotherphoto77.jpg
  ...

The sub-folder names become the labels. Every image is run once through a
pretrained module (by default EfficientNet-Lite0, built offline from weights an
installed package carries); its output, the "bottleneck", is cached as a text
file. Then a new softmax layer, `final_result`, is trained on the bottlenecks,
and module plus layer are frozen into one .pb file with a labels file beside it:

  python retrain.py --image_dir tf_files/flower_photos \
      --how_many_training_steps 500 \
      --summaries_dir tf_files/training_summaries/efficientnet_lite0 \
      --output_graph tf_files/retrained_graph.pb

Watch training with `tensorboard --logdir tf_files/training_summaries`, then
label a photo with:

  python label_image.py --graph tf_files/retrained_graph.pb --image some.jpg

--architecture picks an embedded network (efficientnet_lite0/1/2, built
offline) or one of the codelab's own frozen graphs, mobilenet_<width>_<size>
(with _quantized too) and inception_v3: their archive is used from
--model_dir, downloaded there once if missing; mobilenet_0.25_224 ships in
tf_files/models. --tfhub_module takes any image feature-vector module: a TF
Hub URL, a .tar.gz URL or a local directory.
"""

import sys

from poets import startup

startup.import_tensorflow()  # Before anything else imports TensorFlow.
startup.plain_log_lines()

from absl import app  # noqa: E402
from absl import flags  # noqa: E402
from absl import logging  # noqa: E402

from poets import cli  # noqa: E402
from poets import interrupts  # noqa: E402
from poets import pipeline  # noqa: E402
from poets import settings  # noqa: E402
from poets import tflite  # noqa: E402
from poets.errors import PoetsError  # noqa: E402

_DEFAULT = settings.RetrainSettings()
# Batches are sampled with replacement into memory; more than this many
# bottlenecks at once is a typo, not a setting.
MAX_BATCH_SIZE = 100_000

flags.DEFINE_string('image_dir', _DEFAULT.image_dir,
                    'Folder with one sub-folder of labeled images per class.')
flags.DEFINE_string('output_graph', _DEFAULT.output_graph,
                    'Where to save the trained frozen graph.')
flags.DEFINE_string('intermediate_output_graphs_dir',
                    _DEFAULT.intermediate_output_graphs_dir,
                    'Where to save the intermediate graphs.')
flags.DEFINE_integer('intermediate_store_frequency',
                     _DEFAULT.intermediate_store_frequency,
                     'How many steps between intermediate graphs; 0 = none.',
                     lower_bound=0)
flags.DEFINE_string('output_labels', _DEFAULT.output_labels,
                    "Where to save the trained graph's labels.")
flags.DEFINE_string('summaries_dir', _DEFAULT.summaries_dir,
                    'Where to save summary logs for TensorBoard (default: '
                    'tf_files/training_summaries/<architecture or module '
                    'name>). Event files of an earlier run there are moved '
                    'to ~previous_runs/<date>, never deleted.')
flags.DEFINE_integer('how_many_training_steps',
                     _DEFAULT.how_many_training_steps,
                     'How many training steps to run before ending.',
                     lower_bound=0)
flags.DEFINE_float('learning_rate', _DEFAULT.learning_rate,
                   'How large a learning rate to use when training.',
                   lower_bound=0)
flags.DEFINE_float('testing_percentage', _DEFAULT.testing_percentage,
                   'What percentage of images to use as a test set.',
                   lower_bound=0, upper_bound=100)
flags.DEFINE_float('validation_percentage', _DEFAULT.validation_percentage,
                   'What percentage of images to use as a validation set.',
                   lower_bound=0, upper_bound=100)
flags.DEFINE_integer('eval_step_interval', _DEFAULT.eval_step_interval,
                     'How often to evaluate the training results.',
                     lower_bound=1)
flags.DEFINE_integer('train_batch_size', _DEFAULT.train_batch_size,
                     'How many images to train on at a time.',
                     lower_bound=1, upper_bound=MAX_BATCH_SIZE)
flags.DEFINE_integer('test_batch_size', _DEFAULT.test_batch_size,
                     'How many images to test on; -1 = the whole test set.')
flags.DEFINE_integer('validation_batch_size', _DEFAULT.validation_batch_size,
                     'How many images to use in an evaluation batch; -1 = '
                     'the whole validation set.')
flags.DEFINE_bool('print_misclassified_test_images',
                  _DEFAULT.print_misclassified_test_images,
                  'Whether to print out a list of all misclassified test '
                  'images.')
flags.DEFINE_string('bottleneck_dir', _DEFAULT.bottleneck_dir,
                    'Path to cache bottleneck layer values as files.')
flags.DEFINE_string('final_tensor_name', _DEFAULT.final_tensor_name,
                    'The name of the output classification layer in the '
                    'retrained graph.')
flags.DEFINE_bool('flip_left_right', _DEFAULT.flip_left_right,
                  'Whether to randomly flip half of the training images '
                  'horizontally.')
flags.DEFINE_integer('random_crop', _DEFAULT.random_crop,
                     'A percentage determining how much of a margin to '
                     'randomly crop off the training images.',
                     lower_bound=0, upper_bound=100)
flags.DEFINE_integer('random_scale', _DEFAULT.random_scale,
                     'A percentage determining how much to randomly scale up '
                     'the size of the training images by.',
                     lower_bound=0, upper_bound=100)
flags.DEFINE_integer('random_brightness', _DEFAULT.random_brightness,
                     'A percentage determining how much to randomly multiply '
                     'the training image input pixels up or down by.',
                     lower_bound=0, upper_bound=100)
cli.define_module_flags(_DEFAULT)
for _name in cli.MODULE_FLAGS:
  flags.declare_key_flag(_name)
flags.DEFINE_string('saved_model_dir', _DEFAULT.saved_model_dir,
                    'Where to save the exported graph as a SavedModel with a '
                    'serving signature image -> prediction; empty = none.')
flags.DEFINE_string('output_tflite', _DEFAULT.output_tflite,
                    'Where to save the retrained model as TensorFlow Lite '
                    '(.tflite, for phones); empty = none. It uses the same '
                    'labels file.')
flags.DEFINE_enum('tflite_quantization', _DEFAULT.tflite_quantization,
                  tflite.QUANTIZATIONS,
                  'How --output_tflite is stored: none (float32), dynamic '
                  '(int8 weights, float arithmetic) or int8 (full-integer, '
                  'calibrated on a few hundred of the training images).')
flags.DEFINE_string('checkpoint_path', _DEFAULT.checkpoint_path,
                    'Where to save the checkpoint of the trained layer.')
flags.DEFINE_enum('logging_verbosity', 'INFO',
                  ['DEBUG', 'INFO', 'WARN', 'ERROR', 'FATAL'],
                  'How much logging output should be produced.')
flags.DEFINE_integer('random_seed', _DEFAULT.random_seed,
                     'Seed for sampling batches and initialising the layer, '
                     'for reproducible runs; unset = a new sequence each run.',
                     lower_bound=0, upper_bound=settings.MAX_RANDOM_SEED)

for _name in ('image_dir', 'output_graph', 'output_labels', 'bottleneck_dir',
              'checkpoint_path', 'intermediate_output_graphs_dir'):
  flags.register_validator(_name, cli.is_path,
                           'must name a file or folder (not empty, no NUL)')
for _name in ('summaries_dir', 'saved_model_dir', 'output_tflite'):
  flags.register_validator(_name, cli.is_optional_path, 'must not hold NUL')
for _name in ('learning_rate', 'testing_percentage', 'validation_percentage'):
  flags.register_validator(_name, cli.is_finite, 'must be a finite number')
for _name in ('test_batch_size', 'validation_batch_size'):
  flags.register_validator(
      _name, lambda n: cli.batch_size_or_all(n) and n <= MAX_BATCH_SIZE,
      f'must be -1 (the whole set) or from 1 to {MAX_BATCH_SIZE}')
flags.register_validator(
    'final_tensor_name', settings.is_valid_final_tensor_name,
    'must be an operation name (letters, digits, ".", "_", "-", starting with '
    'a letter or digit) not taken by the graph (input, final_retrain_ops, '
    'cross_entropy, train, accuracy, Placeholder)')
flags.register_multi_flags_validator(
    ['testing_percentage', 'validation_percentage'],
    lambda f: f['testing_percentage'] + f['validation_percentage'] < 100,
    'together must stay below 100, or no image is left for training')
flags.register_multi_flags_validator(
    ['tflite_quantization', 'output_tflite'],
    lambda f: f['tflite_quantization'] == 'none' or f['output_tflite'],
    'a quantization needs --output_tflite, the .tflite file to write')

FLAGS = flags.FLAGS


def settings_from_flags():
  """The parsed flags as RetrainSettings, each field from its namesake."""
  return settings.from_flags(FLAGS)


def main(argv):
  cli.refuse_positional(argv, 'retrain.py')
  logging.set_verbosity(FLAGS.logging_verbosity.lower().replace('warn',
                                                                'warning'))
  run_settings = settings_from_flags()
  for warning in settings.warnings(run_settings):
    logging.warning('%s', warning)
  with interrupts.StopSignals() as stop:  # SIGTERM acts as Ctrl-C.
    try:
      result = pipeline.run(run_settings)
    except PoetsError as e:
      sys.exit(f'ERROR: {e}')
    except KeyboardInterrupt:
      print('Interrupted; finished bottleneck files and outputs are intact.',
            file=sys.stderr)
      sys.exit(stop.exit_code)
  if result.training.interrupted:
    sys.exit(stop.exit_code)  # What was trained is saved; the run stopped.


if __name__ == '__main__':
  app.run(main, flags_parser=cli.parse_flags_or_exit)
