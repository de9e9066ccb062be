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

from absl import app
from absl import flags
from absl import logging

from poets import cli
from poets import interrupts
from poets import settings
from poets import startup

DEFAULTS = settings.RetrainSettings()
# Batches are sampled with replacement into memory; more than this many
# bottlenecks at once is a typo, not a setting.
MAX_BATCH_SIZE = 100_000

cli.define_flags(DEFAULTS, {
    'image_dir': 'Folder with one sub-folder of labeled images per class.',
    'output_graph': 'Where to save the trained frozen graph.',
    'intermediate_output_graphs_dir': 'Where to save the intermediate graphs.',
    'intermediate_store_frequency': (
        'How many steps between intermediate graphs; 0 = none.'),
    'output_labels': "Where to save the trained graph's labels.",
    'summaries_dir': (
        'Where to save summary logs for TensorBoard (default: '
        'tf_files/training_summaries/<architecture or module name>). Event '
        'files of an earlier run there are moved, never deleted, to '
        'tf_files/previous_runs/<name>/<date> (from a folder of your own, to '
        'its ~previous_runs/<date>).'),
    'how_many_training_steps': 'How many training steps to run before ending.',
    'learning_rate': 'How large a learning rate to use when training.',
    'testing_percentage': 'What percentage of images to use as a test set.',
    'validation_percentage': (
        'What percentage of images to use as a validation set.'),
    'eval_step_interval': 'How often to evaluate the training results.',
    'train_batch_size': 'How many images to train on at a time.',
    'test_batch_size': (
        'How many images to test on; -1 = the whole test set.'),
    'validation_batch_size': (
        'How many images to use in an evaluation batch; -1 = the whole '
        'validation set.'),
    'print_misclassified_test_images': (
        'Whether to print out a list of all misclassified test images.'),
    'bottleneck_dir': 'Path to cache bottleneck layer values as files.',
    'final_tensor_name': (
        'The name of the output classification layer in the retrained '
        'graph.'),
    'flip_left_right': (
        'Whether to randomly flip half of the training images horizontally.'),
    'random_crop': (
        'A percentage determining how much of a margin to randomly crop off '
        'the training images.'),
    'random_scale': (
        'A percentage determining how much to randomly scale up the size of '
        'the training images by.'),
    'random_brightness': (
        'A percentage determining how much to randomly multiply the training '
        'image input pixels up or down by.'),
    'saved_model_dir': (
        'Where to save the exported graph as a SavedModel with a serving '
        'signature image -> prediction; empty = none.'),
    'output_tflite': (
        'Where to save the retrained model as TensorFlow Lite (.tflite, for '
        'phones); empty = none. It uses the same labels file.'),
    'checkpoint_path': 'Where to save the checkpoint of the trained layer.',
    'fine_tune_blocks': (
        'How many of the embedded network\'s top blocks to fine-tune, with '
        'its final 1x1 convolution, after the new layer has trained alone; '
        '0 = only the new layer, as the codelab. The input of the lowest '
        'one is cached per image under --bottleneck_dir.'),
    'fine_tune_steps': (
        'With --fine_tune_blocks: training steps of the blocks and the new '
        'layer together, after --how_many_training_steps of the layer '
        'alone.'),
    'fine_tune_learning_rate': (
        'With --fine_tune_blocks: the learning rate of the fine-tuned '
        'blocks, which learn with Adam (the new layer keeps --learning_rate '
        'and plain gradient descent). The default was the best of those '
        'measured on 600 flower photos (docs/fine_tuning.md).'),
    'random_seed': (
        'Seed for sampling batches and initialising the layer, for '
        'reproducible runs; unset = a new sequence each run.'),
    'download_timeout': ('Seconds a network or module download may take in '
                         'all, however slowly the server sends.'),
    'download_max_mb': ('MiB a network or module download may be; a '
                        'larger one is dropped.'),
}, bounds={
    'download_timeout': (1, None),
    'download_max_mb': (1, None),
    'intermediate_store_frequency': (0, None),
    'how_many_training_steps': (0, None),
    'learning_rate': (0, None),
    'testing_percentage': (0, 100),
    'validation_percentage': (0, 100),
    'eval_step_interval': (1, None),
    'train_batch_size': (1, MAX_BATCH_SIZE),
    'random_crop': (0, 100),
    'random_scale': (0, 100),
    'random_brightness': (0, 100),
    'random_seed': (0, settings.MAX_RANDOM_SEED),
    'fine_tune_blocks': (0, None),
    'fine_tune_steps': (0, None),
    'fine_tune_learning_rate': (0, None),
})
cli.define_module_flags(DEFAULTS)
flags.DEFINE_enum(
    'tflite_quantization', DEFAULTS.tflite_quantization, settings.QUANTIZATIONS,
    'How --output_tflite is stored: none (float32), dynamic '
    '(int8 weights, float arithmetic) or int8 (full-integer, '
    'calibrated on a few hundred of the training images).')
flags.DEFINE_enum('logging_verbosity', 'INFO',
                  ['DEBUG', 'INFO', 'WARN', 'ERROR', 'FATAL'],
                  'How much logging output should be produced.')

for _name in ('image_dir', 'output_graph', 'output_labels', 'bottleneck_dir',
              'checkpoint_path', 'intermediate_output_graphs_dir'):
  flags.register_validator(_name, cli.is_path,
                           'must name a file or folder (not empty, no NUL)')
for _name in ('summaries_dir', 'saved_model_dir', 'output_tflite'):
  flags.register_validator(_name, cli.is_optional_path, 'must not hold NUL')
for _name in ('learning_rate', 'testing_percentage', 'validation_percentage',
              'fine_tune_learning_rate'):
  flags.register_validator(_name, cli.is_finite, 'must be a finite number')
for _name in ('test_batch_size', 'validation_batch_size'):
  flags.register_validator(
      _name, lambda n: cli.batch_size_or_all(n) and n <= MAX_BATCH_SIZE,
      f'must be -1 (the whole set) or from 1 to {MAX_BATCH_SIZE}')
flags.register_validator('final_tensor_name',
                         settings.is_valid_final_tensor_name,
                         settings.FINAL_TENSOR_NAME_RULE)
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
  startup.begin_script()  # Before anything imports TensorFlow.
  from poets import pipeline  # pylint: disable=g-import-not-at-top
  logging.set_verbosity(cli.absl_verbosity(FLAGS.logging_verbosity))
  run_settings = settings_from_flags()
  for warning in settings.warnings(run_settings):
    logging.warning('%s', warning)
  with interrupts.StopSignals() as stop:  # SIGTERM acts as Ctrl-C.
    try:
      with cli.one_line_errors():
        result = pipeline.run(run_settings)
    except KeyboardInterrupt:
      print('Interrupted; finished bottleneck files and outputs are intact.',
            file=sys.stderr)
      sys.exit(stop.exit_code)
  if result.training.interrupted:
    sys.exit(stop.exit_code)  # What was trained is saved; the run stopped.


if __name__ == '__main__':
  app.run(main, flags_parser=cli.parse_flags_or_exit)
