"""label_image.py --imagenet: the embedded module's own ImageNet classifier.

Frozen once like a retrained graph, so a newcomer can label a photo before
retraining anything.
"""

import tensorflow as tf
import tensorflow_hub as hub

from poets import settings
from poets.core import export
from poets.core import graph_names
from poets.core.networks import architectures
from poets.core.networks import efficientnet_lite

def export_imagenet_graph(graph_path=settings.IMAGENET_GRAPH,
                          labels_path=settings.IMAGENET_LABELS,
                          architecture=architectures.DEFAULT_ARCHITECTURE,
                          model_dir='tf_files/models'):
  """Freezes the embedded module's ImageNet classifier like a retrained graph
  (input Placeholder in [0, 1], output final_result), so a newcomer can try
  label_image on a photo before retraining anything."""
  module_path = efficientnet_lite.ensure_module(architecture, model_dir)
  size = efficientnet_lite.get_variant(architecture).image_size
  graph = tf.Graph()
  with graph.as_default():
    image_input = tf.compat.v1.placeholder(
        tf.float32, [None, size, size, 3], name=graph_names.INPUT_NAME)
    logits = hub.load(module_path).imagenet_logits(image_input)
    probabilities = tf.nn.softmax(logits, name='final_result')
    init = tf.compat.v1.global_variables_initializer()
  with tf.compat.v1.Session(graph=graph) as session:
    session.run(init)
    graph_def = export.freeze(session, probabilities.op.name)
  export.save_graph(graph_def, graph_path)
  export.save_labels(efficientnet_lite.imagenet_labels(), labels_path)
