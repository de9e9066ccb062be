r"""Rounds a frozen graph's weights: the codelab's quantize_graph.

  python -m scripts.quantize_graph --input=tf_files/optimized_graph.pb \
      --output=tf_files/rounded_graph.pb --output_node_names=final_result \
      --mode=weights_rounded

rounds every float weight to one of 256 levels (2**--bitdepth) and keeps the
graph float, so it runs anywhere a .pb runs and is as large, but compresses
3-4 times smaller (`gzip -c rounded_graph.pb > rounded_graph.pb.gz`), as an
app's download does. The original's other modes rewrote graphs into
TensorFlow 1's quantized ops, which are gone; an integer model for a phone
is TensorFlow Lite's job: retrain.py --output_tflite ... --tflite_quantization
int8 (or dynamic), or tflite_convert.py --quantization.
"""

import os
import sys

from absl import app
from absl import flags

from poets import cli
from poets import files
from poets import startup
from poets.errors import PoetsError

# The original's modes; only weights_rounded still means something here.
MODES = ('round', 'quantize', 'eightbit', 'weights', 'test', 'weights_rounded')

flags.DEFINE_string('input', None, 'The frozen graph (.pb) to read.')
flags.DEFINE_string('output', None, 'Where to write the rounded graph.')
flags.DEFINE_string('output_node_names', 'final_result',
                    'The output node(s), comma-separated; what they do not '
                    'need is dropped.')
flags.DEFINE_enum('mode', 'weights_rounded', MODES,
                  'weights_rounded (the codelab\'s); the others are refused '
                  'with what to use instead.')
flags.DEFINE_integer('bitdepth', 8, 'Levels per weight tensor: 2**bitdepth.',
                     lower_bound=1, upper_bound=16)
flags.mark_flags_as_required(['input', 'output'])
for _name in ('input', 'output', 'output_node_names'):
  flags.register_validator(_name, cli.is_path,
                           'must name a file or node (not empty, no NUL)')

FLAGS = flags.FLAGS


def main(argv):
  cli.refuse_positional(argv, 'quantize_graph')
  if FLAGS.mode != 'weights_rounded':
    sys.exit(f'ERROR: --mode={FLAGS.mode} made TensorFlow 1 quantized ops, '
             'which TensorFlow 2 no longer has; for an integer model use '
             'TensorFlow Lite: retrain.py --output_tflite '
             'tf_files/optimized_graph.tflite --tflite_quantization int8 (or '
             'tflite_convert.py --quantization int8), or keep '
             '--mode=weights_rounded for a .pb that compresses smaller.')
  startup.begin_script()  # Before anything imports TensorFlow.
  # pylint: disable=g-import-not-at-top
  from poets.core import export
  from poets.core import frozen_graphs
  from poets.extras import graph_tools
  try:
    if os.path.realpath(FLAGS.input) == os.path.realpath(FLAGS.output):
      raise PoetsError(f'--output {FLAGS.output} is also --input; pass '
                       'another name, such as tf_files/rounded_graph.pb.')
    files.check_output_file(FLAGS.output, '--output')
    graph_def = frozen_graphs.load_graph_def(FLAGS.input, '--input')
    rounded = graph_tools.round_weights(
        graph_def, FLAGS.output_node_names.split(','), FLAGS.bitdepth)
    export.save_graph(rounded, FLAGS.output)
  except PoetsError as e:
    sys.exit(f'ERROR: {e}')
  print(f'Wrote {FLAGS.output}: each weight rounded to {2**FLAGS.bitdepth} '
        'levels; compare the compressed sizes with gzip.')


if __name__ == '__main__':
  app.run(main, flags_parser=cli.parse_flags_or_exit)
