"""The new layer: a softmax on top of the module's bottleneck, with the
original retrain.py's names (poets.core.graph_names).

Training builds it with its loss and training ops; export builds it alone on
the module, to freeze it with the trained values.
"""

import dataclasses

import tensorflow as tf

from poets.core import fine_tuning
from poets.core import graph_names
from poets.core import summary_ops
from poets.errors import PoetsError


@dataclasses.dataclass
class FinalLayer:
  bottleneck_input: tf.Tensor
  ground_truth_input: tf.Tensor
  final_tensor: tf.Tensor
  train_step: tf.Operation | None = None
  cross_entropy: tf.Tensor | None = None
  evaluation_step: tf.Tensor | None = None
  prediction: tf.Tensor | None = None


def _inputs(bottleneck_tensor, ground_truth_tensor):
  """The layer's two inputs, placeholders named as the original's; with a
  tensor each defaults to it, so training runs without feeding them and
  evaluation feeds them."""
  with tf.name_scope(graph_names.INPUT_SCOPE):
    bottleneck_input = tf.compat.v1.placeholder_with_default(
        bottleneck_tensor, shape=[None, bottleneck_tensor.shape[-1]],
        name=graph_names.BOTTLENECK_INPUT)
    if ground_truth_tensor is None:
      ground_truth_input = tf.compat.v1.placeholder(
          tf.int64, [None], name=graph_names.GROUND_TRUTH_INPUT)
    else:
      ground_truth_input = tf.compat.v1.placeholder_with_default(
          ground_truth_tensor, [None], name=graph_names.GROUND_TRUTH_INPUT)
  return bottleneck_input, ground_truth_input


def _logits(bottleneck_input, class_count):
  """The layer itself, weights and biases; returns them and its logits."""
  bottleneck_size = bottleneck_input.shape[-1]
  with tf.name_scope(graph_names.LAYER_SCOPE):
    with tf.name_scope('weights'):
      layer_weights = tf.compat.v1.Variable(
          tf.random.truncated_normal([bottleneck_size, class_count],
                                     stddev=0.001), name='final_weights')
      summary_ops.variable_summaries(layer_weights)
    with tf.name_scope('biases'):
      layer_biases = tf.compat.v1.Variable(tf.zeros([class_count]),
                                           name='final_biases')
      summary_ops.variable_summaries(layer_biases)
    with tf.name_scope('Wx_plus_b'):
      logits = tf.matmul(bottleneck_input, layer_weights) + layer_biases
      summary_ops.summary('histogram', 'pre_activations', logits)
  return [layer_weights, layer_biases], logits


def _softmax(logits, final_tensor_name):
  final_tensor = tf.nn.softmax(logits, name=final_tensor_name)
  if final_tensor.op.name != final_tensor_name:
    # TensorFlow renamed it: the module already has an op of that name.
    raise PoetsError(f"--final_tensor_name '{final_tensor_name}' is already "
                     'the name of an operation in the graph; choose another.')
  summary_ops.summary('histogram', 'activations', final_tensor)
  return final_tensor


def _train_step(loss, layer_variables, learning_rate, fine_tuned):
  """Plain gradient descent on the new layer, as the original; with
  `fine_tuned` (variables, rate), Adam on those: it scales each weight's
  step to its own gradients, so one small rate suits every pretrained
  kernel, where plain descent moved some far and others hardly at all
  (docs/fine_tuning.md has the measurements)."""
  optimizer = tf.compat.v1.train.GradientDescentOptimizer(learning_rate)
  if fine_tuned is None:
    # Only the new layer learns; the module stays as it was pretrained.
    return optimizer.minimize(loss, var_list=layer_variables)
  variables, rate = fine_tuned
  gradients = tf.gradients(loss, layer_variables + variables)
  count = len(layer_variables)
  return tf.group(
      optimizer.apply_gradients(zip(gradients[:count], layer_variables)),
      tf.compat.v1.train.AdamOptimizer(rate).apply_gradients(zip(gradients[count:], variables)))


def _accuracy(final_tensor, ground_truth_input):
  """The predicted classes and the share of them that are right."""
  with tf.name_scope('accuracy'):
    with tf.name_scope('correct_prediction'):
      prediction = tf.argmax(final_tensor, 1)
      correct_prediction = tf.equal(prediction, ground_truth_input)
    with tf.name_scope('accuracy'):
      evaluation_step = tf.reduce_mean(tf.cast(correct_prediction,
                                               tf.float32))
  summary_ops.summary('scalar', 'accuracy', evaluation_step)
  return prediction, evaluation_step


def add_final_retrain_ops(class_count, final_tensor_name, bottleneck_tensor,
                          ground_truth_tensor=None, learning_rate=None,
                          fine_tuned=None):
  """Adds the new softmax layer on top of `bottleneck_tensor`.

  Without a learning rate the graph is for evaluation and export only: no
  loss, no training ops. `fine_tuned`, (variables, learning rate), trains
  those too, at their own rate.
  """
  bottleneck_input, ground_truth_input = _inputs(bottleneck_tensor,
                                                 ground_truth_tensor)
  layer_variables, logits = _logits(bottleneck_input, class_count)
  layer = FinalLayer(bottleneck_input, ground_truth_input,
                     _softmax(logits, final_tensor_name))
  if learning_rate is None:
    return layer
  with tf.name_scope('cross_entropy'):
    layer.cross_entropy = tf.compat.v1.losses.sparse_softmax_cross_entropy(
        labels=ground_truth_input, logits=logits)
  summary_ops.summary('scalar', 'cross_entropy', layer.cross_entropy)
  with tf.name_scope('train'):
    layer.train_step = _train_step(layer.cross_entropy, layer_variables,
                                   learning_rate, fine_tuned)
  layer.prediction, layer.evaluation_step = _accuracy(layer.final_tensor,
                                                      ground_truth_input)
  return layer


def layer_variables_of(graph):
  """What is trained, saved and exported: the new layer's variables, and
  the fine-tuned blocks' when there are some."""
  return graph.get_collection(
      tf.compat.v1.GraphKeys.TRAINABLE_VARIABLES,
      scope=graph_names.LAYER_SCOPE) + fine_tuning.top_variables_of(graph)
