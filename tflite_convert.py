r"""Converts a frozen graph to TensorFlow Lite: the codelab's tflite_convert.

"TensorFlow for Poets 2" converted the retrained graph for a phone after
training, with

  tflite_convert --graph_def_file=tf_files/retrained_graph.pb \
      --output_file=tf_files/optimized_graph.lite \
      --input_array=input --output_array=final_result ...

This script takes the same flags for the graph and its layer names, and picks
the storage with one more, --quantization:

  python tflite_convert.py --graph_def_file=tf_files/retrained_graph.pb \
      --output_file=tf_files/optimized_graph.tflite \
      --input_array=Placeholder --output_array=final_result \
      --quantization=int8 --image_dir=tf_files/flower_photos

none keeps float32, dynamic stores the weights as int8, int8 quantizes
everything and calibrates on a few hundred photos from --image_dir, decoded
and resized as retrain.py does, then scaled by --input_mean/--input_std (the
defaults fit this project's graphs; the codelab's MobileNet graphs take
--input_mean=128 --input_std=128). The labels (--labels, the graph's labels
file) and that normalization go into the model as metadata, so MediaPipe
Tasks' ImageClassifier loads it with no other file. retrain.py
--output_tflite does the same at the end of training. Label photos with the
result through `label_image.py --graph tf_files/optimized_graph.tflite`.
"""


from absl import app
from absl import flags
from absl import logging

from poets import cli
from poets import settings
from poets import startup

DEFAULTS = settings.ConvertConfig()

cli.define_flags(DEFAULTS, {
    'graph_def_file': 'The frozen graph (.pb) to convert.',
    'output_file': 'Where to write the TensorFlow Lite model.',
    'input_array': ('Name of the input layer: Placeholder for this project, '
                    "input (MobileNet) for the codelab's graphs."),
    'output_array': 'Name of the output layer.',
    'labels': ('The graph\'s labels file (retrain.py --output_labels), packed '
               'into the model with its input normalization as metadata.'),
    'image_dir': ('Photos to calibrate int8 on (searched recursively; '
                  f'{settings.CALIBRATION_IMAGES} evenly spread ones used).'),
    'input_mean': 'Subtracted from each calibration pixel (0-255).',
    'input_std': ('Each calibration pixel minus --input_mean is divided by '
                  'this; the defaults give the [0, 1] retrain.py trains on.'),
    'allow_io_ops': ('Convert a graph even if it holds ops that read or '
                     'write files, the network or Python (refused by '
                     'default); only for graphs you trust.'),
})
flags.DEFINE_enum('quantization', DEFAULTS.quantization,
                  settings.QUANTIZATIONS,
                  'none (float32), dynamic (int8 weights, float arithmetic) '
                  'or int8 (full-integer, calibrated on --image_dir).')

for _name in ('graph_def_file', 'output_file', 'input_array', 'output_array',
              'labels'):
  flags.register_validator(_name, cli.is_path,
                           'must name a file or layer (not empty, no NUL)')
flags.register_validator('image_dir', cli.is_optional_path,
                         'must not hold NUL')
flags.register_validator('input_mean', cli.is_finite,
                         'must be a finite number')
flags.register_validator('input_std', settings.is_valid_input_std,
                         settings.INPUT_STD_RULE)
flags.register_multi_flags_validator(
    ['quantization', 'image_dir'],
    lambda f: f['quantization'] != 'int8' or f['image_dir'],
    'int8 calibrates on photos: pass --image_dir a folder of photos like the '
    'ones the model will label')

FLAGS = flags.FLAGS


def main(argv):
  cli.refuse_positional(argv, 'tflite_convert.py')
  startup.begin_script()  # Before anything imports TensorFlow.
  # pylint: disable-next=g-import-not-at-top
  from poets.extras import tflite_converter
  logging.set_verbosity(logging.INFO)
  config = settings.ConvertConfig(
      graph_def_file=FLAGS.graph_def_file, output_file=FLAGS.output_file,
      input_array=FLAGS.input_array, output_array=FLAGS.output_array,
      labels=FLAGS.labels,
      quantization=FLAGS.quantization, image_dir=FLAGS.image_dir,
      input_mean=FLAGS.input_mean, input_std=FLAGS.input_std,
      allow_io_ops=FLAGS.allow_io_ops)
  with cli.one_line_errors():
    size = tflite_converter.convert_graph_file(config)
  print(f'Wrote {config.output_file} ({size / 1e6:.1f} MB, quantization '
        f'{config.quantization}).')


if __name__ == '__main__':
  app.run(main, flags_parser=cli.parse_flags_or_exit)
