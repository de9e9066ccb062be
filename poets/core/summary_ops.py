"""TensorBoard summaries: the event files and the layer's summaries' tags."""

import tensorflow as tf

from poets import summaries


def event_writer(directory, graph=None, suffix=''):
  """A FileWriter whose file name carries this process's id.

  Event files are named by the second and the host only; two runs writing
  into one --summaries_dir at once would otherwise share one file and
  corrupt it.
  """
  return summaries.TolerantWriter(directory, graph, suffix)


def summary(kind, name, value):
  """A summary whose tag is exactly `<current scope>/<name>`.

  tf.compat.v1.summary.scalar would make the tags `accuracy_1` and
  `cross_entropy_1` (their name scopes are taken by the ops); the tags
  TensorBoard shows should be the plain names.
  """
  scope = tf.compat.v1.get_default_graph().get_name_scope()
  tag = f'{scope}/{name}' if scope else name
  if kind == 'scalar':
    op = tf.raw_ops.ScalarSummary(tags=tag, values=value)
  else:
    op = tf.raw_ops.HistogramSummary(tag=tag, values=value)
  tf.compat.v1.add_to_collection(tf.compat.v1.GraphKeys.SUMMARIES, op)


def variable_summaries(var):
  """Mean, stddev, min, max and a histogram of a tensor, as the original."""
  with tf.name_scope('summaries'):
    mean = tf.reduce_mean(var)
    summary('scalar', 'mean', mean)
    summary('scalar', 'stddev',
             tf.sqrt(tf.reduce_mean(tf.square(var - mean))))
    summary('scalar', 'max', tf.reduce_max(var))
    summary('scalar', 'min', tf.reduce_min(var))
    summary('histogram', 'histogram', var)
