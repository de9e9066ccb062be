r"""`python -m scripts.optimize_for_inference`: TensorFlow's own tool, quietly.

The codelab's second half began with

  python -m tensorflow.python.tools.optimize_for_inference \
      --input=tf_files/retrained_graph.pb --output=tf_files/optimized_graph.pb \
      --input_names=Placeholder --output_names=final_result

This runs exactly that tool, with its flags, without TensorFlow's start-up
lines and its notices that the tool's functions are TensorFlow 1 APIs.
"""

import runpy

from poets import startup

if __name__ == '__main__':
  startup.begin_script()
  runpy.run_module('tensorflow.python.tools.optimize_for_inference',
                   run_name='__main__', alter_sys=True)
