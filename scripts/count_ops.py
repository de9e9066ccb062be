r"""Counts the operations of a frozen graph: the codelab's count_ops.

  python -m scripts.count_ops tf_files/retrained_graph.pb

prints how many operations the graph runs, those of the functions it calls
included (this project's graphs hold their network in one); a second
argument counts only the operations of that name or type:

  python -m scripts.count_ops tf_files/optimized_graph.pb Conv2D
"""

import sys

from poets import startup


def main(argv):
  if not 2 <= len(argv) <= 3:
    sys.exit('ERROR: usage: python -m scripts.count_ops GRAPH.pb [OP_NAME or '
             'OP_TYPE]')
  startup.begin_script()
  # pylint: disable=g-import-not-at-top
  from poets.core import frozen_graphs
  from poets.errors import PoetsError
  from poets.extras import graph_tools
  try:
    graph_def = frozen_graphs.load_graph_def(argv[1], 'GRAPH')
  except PoetsError as e:
    sys.exit(f'ERROR: {e}')
  print(graph_tools.count_ops(graph_def, *argv[2:]))


if __name__ == '__main__':
  main(sys.argv)
