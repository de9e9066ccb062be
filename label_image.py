r"""Labels photos with a retrained graph: the codelab's label_image.py.

  python label_image.py --image tf_files/flower_photos/daisy/photo1.jpg

prints the evaluation time and the top five labels with their scores. The
defaults fit graphs made by this project's retrain.py (input `Placeholder`,
output `final_result`, pixels scaled to [0, 1]); the image size is read from
the graph. For graphs made by the codelab's own scripts pass their layer and
normalization:

  MobileNet:    --input_layer=input --input_mean=128 --input_std=128
  Inception v3: --input_layer=Mul --input_height=299 --input_width=299 \
                --input_mean=128 --input_std=128

`--list_layers` shows which input and output names a graph has. Several
photos (`--image a.jpg b.jpg`, or `--image_dir folder/`) are labelled in
batches with `--output_format text|json|csv`. Before retraining anything, try
`--imagenet` to label a photo with the embedded module's 1000 ImageNet
classes.

A TensorFlow Lite model (retrain.py --output_tflite, or tflite_convert.py)
takes the same flags: `--graph tf_files/optimized_graph.tflite`; the labels
packed in it serve unless --labels is given.
"""

import os
import sys

from absl import app
from absl import flags

from poets import cli
from poets import settings
from poets import startup
from poets.core import label_output
from poets.core import model_files

DEFAULTS = settings.LabelConfig()
# Decoded images of one batch sit in memory together.
MAX_BATCH_SIZE = 4096

cli.define_flags(DEFAULTS, {
    'graph': ('The frozen graph (.pb) or TensorFlow Lite model (.tflite, '
              'told apart by content) to run.'),
    'labels': ("The graph's labels file, one label per output; default: the "
               'labels packed in a .tflite, else '
               f'{settings.DEFAULT_LABELS}.'),
    'image_dir': 'A folder whose images (searched recursively) to label.',
    'input_layer': ('Name of the input layer: Placeholder for this project, '
                    'input (MobileNet) or Mul (Inception v3) for the '
                    "codelab's graphs; see --list_layers."),
    'output_layer': 'Name of the output layer.',
    'input_height': "Image height; default: the input layer's, else 224.",
    'input_width': "Image width; default: the input layer's, else 224.",
    'input_mean': 'Subtracted from each pixel (0-255) before --input_std.',
    'input_std': ('Each pixel minus --input_mean is divided by this; the '
                  'defaults give the [0, 1] that retrain.py trained on.'),
    'top_k': 'How many labels to show per image.',
    'batch_size': 'Images per run of the graph.',
    'allow_io_ops': ('Run a graph even if it holds ops that read or write '
                     'files, the network or Python (refused by default: a '
                     'graph is a program); only for graphs you trust.'),
}, bounds={'input_height': (1, settings.MAX_IMAGE_SIZE),
           'input_width': (1, settings.MAX_IMAGE_SIZE),
           'top_k': (1, None), 'batch_size': (1, MAX_BATCH_SIZE)})
flags.DEFINE_multi_string('image', [],
                          'Image(s) to label; repeat the flag, list them '
                          'after it or separate them with commas.')
flags.DEFINE_enum('output_format', 'text', label_output.OUTPUT_FORMATS,
                  'text as the codelab printed it, json or csv for scripts.')
flags.DEFINE_bool('list_layers', False,
                  "Print the graph's candidate input and output layers and "
                  'exit.')
flags.DEFINE_bool(
    'imagenet', False, "Label with the embedded module's ImageNet classifier "
    f'instead of --graph and --labels (written once to '
    f'{settings.IMAGENET_GRAPH} and {settings.IMAGENET_LABELS}).')

flags.register_validator('graph', cli.is_path,
                         'must name a file (not empty, no NUL)')
flags.register_validator('labels', lambda path: path is None or cli.is_path(
    path), 'must name a file (not empty, no NUL)')
flags.register_validator('image_dir', cli.is_optional_path,
                         'must not hold NUL')
flags.register_validator('image', lambda paths: all(map(cli.is_path, paths)),
                         'must name files (not empty, no NUL)')
flags.register_validator('input_mean', cli.is_finite,
                         'must be a finite number')
flags.register_validator('input_std', settings.is_valid_input_std,
                         settings.INPUT_STD_RULE)

FLAGS = flags.FLAGS


def _image_args(values):
  """Comma lists split, unless a comma is part of an existing file's name."""
  paths = []
  for value in values:
    parts = [value] if os.path.exists(value) else value.split(',')
    paths += [p for p in parts if p]
  return paths


def config_from_flags(extra_images):
  return settings.LabelConfig(
      graph=FLAGS.graph,
      labels=FLAGS.labels,
      images=_image_args(FLAGS.image + extra_images),
      image_dir=FLAGS.image_dir,
      input_layer=FLAGS.input_layer,
      output_layer=FLAGS.output_layer,
      input_height=FLAGS.input_height,
      input_width=FLAGS.input_width,
      input_mean=FLAGS.input_mean,
      input_std=FLAGS.input_std,
      top_k=FLAGS.top_k,
      batch_size=FLAGS.batch_size,
      allow_io_ops=FLAGS.allow_io_ops)


def _use_imagenet(config, imagenet_demo):
  """The config with the ImageNet graph, which is built on first use."""
  graph, labels = settings.IMAGENET_GRAPH, settings.IMAGENET_LABELS
  if not (os.path.exists(graph) and os.path.exists(labels)):
    print(f'Writing {graph} and {labels} (once)...', file=sys.stderr)
    imagenet_demo.export_imagenet_graph(graph, labels)
  return settings.LabelConfig(**{
      **vars(config), 'graph': graph,
      'labels': labels
  })


def _labeling(graph):
  """The module that labels with `graph`: a .tflite needs no TensorFlow, so
  the process that labels with one never loads it."""
  # pylint: disable=g-import-not-at-top
  if not FLAGS.imagenet and model_files.is_tflite_file(graph):
    from poets.core import tflite_labeling
    return tflite_labeling
  startup.import_tensorflow()
  from poets.core import labeling
  return labeling


def main(argv):
  startup.begin_script(tensorflow=False)  # Imported below only if needed.
  # A file name need not be UTF-8; print it as the bytes it is, as ls does.
  sys.stdout.reconfigure(errors='surrogateescape')
  with cli.one_line_errors():
    labeling = _labeling(FLAGS.graph)
    if FLAGS.list_layers:
      sys.stdout.write(labeling.list_layers(FLAGS.graph))
      return
    config = config_from_flags(argv[1:])
    if FLAGS.imagenet:
      # pylint: disable-next=g-import-not-at-top
      from poets.extras import imagenet_demo
      config = _use_imagenet(config, imagenet_demo)
      if not config.images and not config.image_dir:
        print(f'Label a photo with: python {argv[0]} --imagenet --image '
              'photo.jpg', file=sys.stderr)
        return
    run = labeling.label_images(config)
  for warning in run.warnings:
    print(f'WARNING: {warning}', file=sys.stderr)
  sys.stdout.write(label_output.format_run(run, FLAGS.output_format))
  errors = [r.error for r in run.results if r.error]
  for error in errors:
    print(f'ERROR: {error}', file=sys.stderr)
  if errors:
    sys.exit(1)


if __name__ == '__main__':
  app.run(main, flags_parser=cli.parse_flags_or_exit)
