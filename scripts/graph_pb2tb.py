r"""Shows a frozen graph in TensorBoard: the codelab's graph_pb2tb.

  python -m scripts.graph_pb2tb tf_files/training_summaries/retrained \
      tf_files/retrained_graph.pb
  tensorboard --logdir tf_files/training_summaries

writes an event file holding the graph into the folder (the first argument),
so TensorBoard's Graphs tab shows it as the run of that folder's name; the
network's function is opened up into its layers and the weights are left out.
"""

import sys

from poets import startup


def main(argv):
  if len(argv) != 3:
    sys.exit('ERROR: usage: python -m scripts.graph_pb2tb OUT_DIR GRAPH.pb')
  startup.begin_script()
  # pylint: disable=g-import-not-at-top
  from poets import files
  from poets.core import frozen_graphs
  from poets.errors import PoetsError
  from poets.extras import graph_tools
  out_dir, graph = argv[1:]
  try:
    graph_def = frozen_graphs.load_graph_def(graph, 'GRAPH')
    files.check_writable(out_dir, 'OUT_DIR')
    graph_tools.write_tensorboard_graph(graph_def, out_dir)
  except PoetsError as e:
    sys.exit(f'ERROR: {e}')
  print(f'Wrote the graph of {graph} to {out_dir}; see it with: tensorboard '
        f'--logdir {out_dir}')


if __name__ == '__main__':
  main(sys.argv)
