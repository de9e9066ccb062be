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

--architecture picks one of the codelab's networks (mobilenet_0.50_224,
inception_v3, ... need network to download) or an embedded one
(efficientnet_lite0/1/2, offline); --tfhub_module takes any image
feature-vector module: a TF Hub URL, a .tar.gz URL or a local directory.
"""

import os
import sys

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

from absl import app  # noqa: E402
from absl import flags  # noqa: E402
from absl import logging  # noqa: E402
import tensorflow as tf  # noqa: E402

from poets import images  # noqa: E402
from poets import pipeline  # noqa: E402
from poets import tflite  # noqa: E402
from poets import training  # noqa: E402
from poets.errors import PoetsError  # noqa: E402

_D = pipeline.RetrainConfig()
_T = training.TrainingConfig()

flags.DEFINE_string('image_dir', _D.image_dir,
                    'Folder with one sub-folder of labeled images per class.')
flags.DEFINE_string('output_graph', _D.output_graph,
                    'Where to save the trained frozen graph.')
flags.DEFINE_string('intermediate_output_graphs_dir',
                    _D.intermediate_output_graphs_dir,
                    'Where to save the intermediate graphs.')
flags.DEFINE_integer('intermediate_store_frequency', 0,
                     'How many steps between intermediate graphs; 0 = none.')
flags.DEFINE_string('output_labels', _D.output_labels,
                    "Where to save the trained graph's labels.")
flags.DEFINE_string('summaries_dir', '',
                    'Where to save summary logs for TensorBoard (default: '
                    'tf_files/training_summaries/<architecture or module '
                    'name>). Event files of an earlier run there are moved '
                    'to previous_runs/<date>, never deleted.')
flags.DEFINE_integer('how_many_training_steps', _T.how_many_training_steps,
                     'How many training steps to run before ending.')
flags.DEFINE_float('learning_rate', _T.learning_rate,
                   'How large a learning rate to use when training.')
flags.DEFINE_float('testing_percentage', _D.testing_percentage,
                   'What percentage of images to use as a test set.')
flags.DEFINE_float('validation_percentage', _D.validation_percentage,
                   'What percentage of images to use as a validation set.')
flags.DEFINE_integer('eval_step_interval', _T.eval_step_interval,
                     'How often to evaluate the training results.')
flags.DEFINE_integer('train_batch_size', _T.train_batch_size,
                     'How many images to train on at a time.')
flags.DEFINE_integer('test_batch_size', _T.test_batch_size,
                     'How many images to test on; -1 = the whole test set.')
flags.DEFINE_integer('validation_batch_size', _T.validation_batch_size,
                     'How many images to use in an evaluation batch; -1 = '
                     'the whole validation set.')
flags.DEFINE_bool('print_misclassified_test_images', False,
                  'Whether to print out a list of all misclassified test '
                  'images.')
flags.DEFINE_string('bottleneck_dir', _D.bottleneck_dir,
                    'Path to cache bottleneck layer values as files.')
flags.DEFINE_string('final_tensor_name', _T.final_tensor_name,
                    'The name of the output classification layer in the '
                    'retrained graph.')
flags.DEFINE_bool('flip_left_right', False,
                  'Whether to randomly flip half of the training images '
                  'horizontally.')
flags.DEFINE_integer('random_crop', 0,
                     'A percentage determining how much of a margin to '
                     'randomly crop off the training images.')
flags.DEFINE_integer('random_scale', 0,
                     'A percentage determining how much to randomly scale up '
                     'the size of the training images by.')
flags.DEFINE_integer('random_brightness', 0,
                     'A percentage determining how much to randomly multiply '
                     'the training image input pixels up or down by.')
flags.DEFINE_string('architecture', '',
                    'Which network to use: efficientnet_lite0 (default, '
                    'offline), efficientnet_lite1, efficientnet_lite2, '
                    'mobilenet_<1.0|0.75|0.50|0.25>_<224|192|160|128> or '
                    'inception_v3 (these download from TF Hub).')
flags.DEFINE_string('tfhub_module', '',
                    'Which image feature-vector module to use instead of '
                    '--architecture: a TF Hub URL, a .tar.gz URL or a local '
                    'directory (TF2 SavedModel or TF1 Hub format).')
flags.DEFINE_string('model_dir', _D.model_dir,
                    'Where the embedded modules are built and downloaded '
                    'modules are cached (sets the TF Hub cache).')
flags.DEFINE_integer('input_height', 0,
                     'Image height for a module whose signature does not fix '
                     'one; 0 = take it from the module.')
flags.DEFINE_integer('input_width', 0,
                     'Image width for a module whose signature does not fix '
                     'one; 0 = take it from the module.')
flags.DEFINE_string('saved_model_dir', '',
                    'Where to save the exported graph as a SavedModel with a '
                    'serving signature image -> prediction; empty = none.')
flags.DEFINE_string('output_tflite', '',
                    'Where to save the retrained model as TensorFlow Lite '
                    '(.tflite, for phones); empty = none. It uses the same '
                    'labels file.')
flags.DEFINE_enum('tflite_quantization', 'none', tflite.QUANTIZATIONS,
                  'How --output_tflite is stored: none (float32), dynamic '
                  '(int8 weights, float arithmetic) or int8 (full-integer, '
                  'calibrated on a few hundred of the training images).')
flags.DEFINE_string('checkpoint_path', _T.checkpoint_path,
                    'Where to save the checkpoint of the trained layer.')
flags.DEFINE_enum('logging_verbosity', 'INFO',
                  ['DEBUG', 'INFO', 'WARN', 'ERROR', 'FATAL'],
                  'How much logging output should be produced.')
flags.DEFINE_integer('random_seed', None,
                     'Seed for sampling batches and initialising the layer, '
                     'for reproducible runs; unset = a new sequence each run.')

FLAGS = flags.FLAGS


def config_from_flags():
  input_size = None
  if FLAGS.input_height or FLAGS.input_width:
    input_size = (FLAGS.input_height, FLAGS.input_width)
  return pipeline.RetrainConfig(
      image_dir=FLAGS.image_dir,
      output_graph=FLAGS.output_graph,
      output_labels=FLAGS.output_labels,
      bottleneck_dir=FLAGS.bottleneck_dir,
      intermediate_output_graphs_dir=FLAGS.intermediate_output_graphs_dir,
      intermediate_store_frequency=FLAGS.intermediate_store_frequency,
      saved_model_dir=FLAGS.saved_model_dir,
      output_tflite=FLAGS.output_tflite,
      tflite_quantization=FLAGS.tflite_quantization,
      testing_percentage=FLAGS.testing_percentage,
      validation_percentage=FLAGS.validation_percentage,
      architecture=FLAGS.architecture,
      tfhub_module=FLAGS.tfhub_module,
      model_dir=FLAGS.model_dir,
      input_size=input_size,
      training=training.TrainingConfig(
          how_many_training_steps=FLAGS.how_many_training_steps,
          learning_rate=FLAGS.learning_rate,
          train_batch_size=FLAGS.train_batch_size,
          eval_step_interval=FLAGS.eval_step_interval,
          validation_batch_size=FLAGS.validation_batch_size,
          test_batch_size=FLAGS.test_batch_size,
          final_tensor_name=FLAGS.final_tensor_name,
          print_misclassified_test_images=(
              FLAGS.print_misclassified_test_images),
          summaries_dir=FLAGS.summaries_dir,
          checkpoint_path=FLAGS.checkpoint_path,
          random_seed=FLAGS.random_seed,
          distortions=images.Distortions(
              flip_left_right=FLAGS.flip_left_right,
              random_crop=FLAGS.random_crop,
              random_scale=FLAGS.random_scale,
              random_brightness=FLAGS.random_brightness)))


def main(argv):
  if len(argv) > 1:
    sys.exit(f'retrain.py: unexpected arguments {argv[1:]}; see --help.')
  logging.set_verbosity(FLAGS.logging_verbosity.lower().replace('warn',
                                                                'warning'))
  # TensorFlow's own deprecation notices about tf.compat.v1 are not for users.
  tf.get_logger().setLevel('ERROR')
  try:
    result = pipeline.run(config_from_flags())
  except PoetsError as e:
    sys.exit(f'ERROR: {e}')
  except KeyboardInterrupt:
    sys.exit('Interrupted; finished bottleneck files and outputs are intact.')
  if result.training.interrupted:
    sys.exit(130)  # What was trained is saved, but the run did not finish.


if __name__ == '__main__':
  app.run(main)
