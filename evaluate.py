r"""Accuracy and cross entropy of exported models: the codelab's evaluate.py.

"TensorFlow for Poets 2" checked each graph it made for the phone with

  python -m scripts.evaluate tf_files/optimized_graph.pb

which prints `Accuracy:` and `Cross Entropy:` on the test photos. This
script does that for any model retrain.py or tflite_convert.py exported: a
frozen graph (.pb), a TensorFlow Lite model (.tflite: float, dynamic or
int8) or a SavedModel folder, on the test split retrain.py made of
--image_dir with the same --testing_percentage and --validation_percentage
(defaults as retrain.py's), with the per-class precision and recall, the
confusion matrix, the number of photos and the model's time per photo.
Several models are measured on the same photos, side by side:

  python evaluate.py tf_files/retrained_graph.pb tf_files/rounded_graph.pb \
      tf_files/optimized_graph.tflite

Models are run as label_image.py runs them, with its layer and
normalization flags.
"""

import sys

from absl import app
from absl import flags

from poets import cli
from poets import settings
from poets import startup

DEFAULTS = settings.EvaluateConfig()

cli.define_flags(DEFAULTS, {
    'image_dir': 'The folder of class sub-folders retrain.py was run on.',
    'testing_percentage': "retrain.py's --testing_percentage.",
    'validation_percentage': "retrain.py's --validation_percentage.",
    'labels': ("The models' labels file; default: the labels packed in a "
               f'.tflite, else {settings.DEFAULT_LABELS}.'),
    'input_layer': 'Name of the input layer (as label_image.py).',
    'output_layer': 'Name of the output layer.',
    'input_mean': 'Subtracted from each pixel (0-255) before --input_std.',
    'input_std': 'Each pixel minus --input_mean is divided by this.',
    'batch_size': 'Photos per run of the model.',
}, bounds={'testing_percentage': (0, 100), 'validation_percentage': (0, 100),
           'batch_size': (1, 4096)})
flags.register_validator('image_dir', cli.is_path,
                         'must name a folder (not empty, no NUL)')
flags.register_validator('labels', lambda path: path is None or cli.is_path(
    path), 'must name a file (not empty, no NUL)')
for _name in ('input_mean', 'testing_percentage', 'validation_percentage'):
  flags.register_validator(_name, cli.is_finite, 'must be a finite number')
flags.register_validator('input_std', settings.is_valid_input_std,
                         settings.INPUT_STD_RULE)

FLAGS = flags.FLAGS


def main(argv):
  startup.begin_script()  # Before anything imports TensorFlow.
  from poets.extras import evaluation  # pylint: disable=g-import-not-at-top
  config = settings.EvaluateConfig(
      models=argv[1:], image_dir=FLAGS.image_dir,
      testing_percentage=FLAGS.testing_percentage,
      validation_percentage=FLAGS.validation_percentage, labels=FLAGS.labels,
      input_layer=FLAGS.input_layer, output_layer=FLAGS.output_layer,
      input_mean=FLAGS.input_mean, input_std=FLAGS.input_std,
      batch_size=FLAGS.batch_size)
  with cli.one_line_errors():
    photos, results = evaluation.evaluate(config)
  sys.stdout.write(evaluation.format_report(config, photos, results))


if __name__ == '__main__':
  app.run(main, flags_parser=cli.parse_flags_or_exit)
