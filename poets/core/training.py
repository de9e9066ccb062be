"""Training: the loop that trains the new layer, its evaluation and the test.

The fourth stage. The layer (poets.core.final_layer) keeps the original's
names but one (poets.core.graph_names): its scope is TF Hub's retrain.py's
`final_retrain_ops`, where the codelab's script had `final_training_ops`;
docs/differences.md lists the differences.

What differs is where a training batch comes from. The original read each
sampled bottleneck from its text file at every step. Here all training
bottlenecks are fed at every step, as the one array that holds them
(TensorFlow takes an aligned array without copying it), and each step
samples its batch with TensorFlow ops (a class uniformly, then an image of
it, as the original did), so a step is a single session call. With
distortions on, the batch comes from a tf.data pipeline that decodes,
distorts and runs the module on sampled images instead.
"""

import dataclasses
import datetime
import os

from absl import logging
import numpy as np
import tensorflow as tf

from poets import files
from poets import interrupts
from poets import settings as settings_module
from poets.core import feeds
from poets.core import final_layer
from poets.core import graph_names
from poets.core import fine_tuning
from poets.core import image_decoding
from poets.core import metrics
from poets.core import modules
from poets.core import summary_ops
from poets.errors import PoetsError


@dataclasses.dataclass
class Evaluation:
  """How the trained layer does on a set of bottlenecks."""
  accuracy: float
  count: int
  predictions: np.ndarray
  ground_truth: np.ndarray
  confusion: np.ndarray  # [true class, predicted class] counts
  scores: np.ndarray | None = None  # float32 [n, classes]: final_result
  filenames: list = dataclasses.field(default_factory=list)  # of each image

  @property
  def precision(self):
    return metrics.precision(self.confusion)

  @property
  def recall(self):
    return metrics.recall(self.confusion)


@dataclasses.dataclass
class TrainingResult:
  steps_done: int
  interrupted: bool
  test: Evaluation | None
  validation_curve: list  # (step, accuracy) at each evaluation
  # The trained layer's variables by name. Export takes them from here, not
  # from the checkpoint file, which another run may be writing at once.
  layer: dict = dataclasses.field(default_factory=dict)


def _kernel_summaries(variables):
  """Each fine-tuned kernel's histogram, and that of its change since
  training began, which shows the blocks learning where the first hardly
  moves."""
  for variable in variables:
    scope, name = variable.op.name.rsplit('/', 1)
    if name == 'kernel':
      with tf.name_scope(f'{scope}/'):
        summary_ops.summary('histogram', name, variable)
        summary_ops.summary('histogram', f'{name}_change',
                 variable - variable.initial_value)


def _class_ranges(ground_truth, class_count):
  """Start offset and count of each class in a class-sorted split."""
  counts = np.bincount(ground_truth, minlength=class_count)
  offsets = np.concatenate([[0], np.cumsum(counts)[:-1]])
  return offsets, counts


def _sample_indices(offsets, counts, class_draw, image_draw):
  """A class uniformly (among those with images), then one of its images.

  The draws are uniform floats in [0, 1), one per sample; returns the indices
  into the class-sorted split and the classes.
  """
  present = np.flatnonzero(counts)
  pick = tf.minimum(tf.cast(class_draw * len(present), tf.int64),
                    len(present) - 1)
  classes = tf.gather(tf.constant(present, tf.int64), pick)
  count = tf.gather(tf.constant(counts, tf.int64), classes)
  within = tf.minimum(tf.cast(image_draw * tf.cast(count, tf.float32),
                              tf.int64), count - 1)
  return tf.gather(tf.constant(offsets, tf.int64), classes) + within, classes


class _CachedBatches:
  """Training batches sampled in-graph from all training bottlenecks.

  They are fed at every step rather than held in a variable: a variable
  would be a second copy of them all, and feeding the aligned array costs
  no copy.
  """

  def __init__(self, split, class_count, batch_size, seed):
    all_bottlenecks = tf.compat.v1.placeholder(
        split.bottlenecks.dtype, split.bottlenecks.shape,
        name='training_bottlenecks')
    self.feed = {all_bottlenecks: feeds.feedable(split.bottlenecks)}
    offsets, counts = _class_ranges(split.ground_truth, class_count)
    indices, self.ground_truth = _sample_indices(
        offsets, counts, tf.random.uniform([batch_size], seed=seed),
        tf.random.uniform([batch_size], seed=None if seed is None else
                          seed + 1))
    self.bottlenecks = tf.cast(tf.gather(all_bottlenecks, indices),
                               tf.float32)


class _DistortedBatches:
  """Training batches of freshly distorted images run through the module."""

  def __init__(self, split, class_count, batch_size, module, distortions,
               seed):
    offsets, counts = _class_ranges(split.ground_truth, class_count)
    height, width = module.image_size
    filenames = tf.constant(image_decoding.file_names(split.filenames))

    def sample(random):
      # Each element's own stateless seed picks its image and distortion, so
      # parallel decoding cannot reorder the random draws.
      seeds = tf.random.experimental.stateless_split(
          tf.stack([random, tf.constant(0, tf.int64)]), 2)
      draws = tf.random.stateless_uniform([2], seeds[0])
      index, label = _sample_indices(offsets, counts, draws[:1], draws[1:])
      contents = tf.io.read_file(tf.gather(filenames, index[0]))
      return (image_decoding.decode_and_distort(contents, height, width,
                                                distortions,
                                                seeds[1]), label[0])

    dataset = image_decoding.in_parallel_batches(
        tf.data.Dataset.random(seed=seed), sample, batch_size)
    distorted, self.ground_truth = tf.compat.v1.data.make_one_shot_iterator(
        dataset).get_next()
    self.bottlenecks = module.apply(distorted)
    self.feed = {}


def _now():
  return datetime.datetime.now()


def _random_batch(split, count, rng):
  """Evaluation batch: `count` sampled like training, or all when -1.

  Relies on the split being sorted by class, as training's sampling does.
  """
  if count < 0 or len(split.ground_truth) == 0:
    return split.bottlenecks, split.ground_truth, list(range(len(
        split.ground_truth)))
  _, offsets, counts = np.unique(split.ground_truth, return_index=True,
                                 return_counts=True)
  pick = rng.integers(len(offsets), size=count)
  chosen = offsets[pick] + rng.integers(counts[pick])
  return split.bottlenecks[chosen], split.ground_truth[chosen], chosen.tolist()


def _validation_batch_size(requested, available):
  """-1 (the whole set) when the validation set is no larger than requested.

  Drawing 100 images with replacement from 63 repeats some and misses others,
  so the validation curve jumps by several points between evaluations for no
  reason; the whole set gives the same images every time.
  """
  if 0 < available <= requested:
    logging.info('Validating on all %d validation images at every '
                 'evaluation: drawing --validation_batch_size %d of them with '
                 'replacement would repeat some, miss others and make the '
                 'curve jump.', available, requested)
    return -1
  return requested


def evaluate(session, layer, bottlenecks, ground_truth, class_count):
  """Runs the layer on bottlenecks; returns an Evaluation.

  A batch at a time: with fine-tuning, an image's activations in the top
  blocks take many times the memory of its cut, so a whole test set in one
  run would need memory in proportion to the folder.
  """
  size = graph_names.BATCH_SIZE
  batches = [session.run([layer.prediction, layer.final_tensor],
                         {layer.bottleneck_input: bottlenecks[start:
                                                              start + size]})
             for start in range(0, len(ground_truth), size)]
  predictions = np.concatenate([batch[0] for batch in batches])
  scores = np.concatenate([batch[1] for batch in batches])
  # As the graph's evaluation_step computes it, in float32.
  accuracy = np.mean(predictions == ground_truth, dtype=np.float32)
  confusion = np.zeros([class_count, class_count], np.int64)
  np.add.at(confusion, (ground_truth, predictions), 1)
  return Evaluation(float(accuracy), len(ground_truth), predictions,
                    ground_truth, confusion, scores)


def log_class_table(evaluation, labels):
  """The per-class precision/recall table and the confusion matrix."""
  width = max(len(label) for label in labels + ['class'])
  lines = [f'{"class":<{width}}  precision  recall  count']
  for label, precision, recall, count in zip(
      labels, evaluation.precision, evaluation.recall,
      evaluation.confusion.sum(axis=1)):
    lines.append(f'{label:<{width}}  {precision:9.3f}  {recall:6.3f}  '
                 f'{count:5d}')
  logging.info('Per-class results on the test set:\n%s', '\n'.join(lines))
  header = ' ' * width + '  ' + ' '.join(f'{i:>5d}' for i in range(
      len(labels)))
  rows = [f'{label:<{width}}  ' + ' '.join(f'{n:>5d}' for n in row)
          for label, row in zip(labels, evaluation.confusion)]
  logging.info('Confusion matrix (rows: true class, columns: predicted, in '
               'label order):\n%s', '\n'.join([header] + rows))


def _warn_empty(splits, labels):
  for name in ('validation', 'testing'):
    present = set(splits[name].ground_truth.tolist())
    missing = [label for i, label in enumerate(labels) if i not in present]
    if missing:
      logging.warning('No %s images for %s; evaluating on the classes that '
                      'have some.', name, ', '.join(missing))


# A loss this many times that of guessing means the steps overshoot.
EXPLODED_FACTOR = 100
# Prints as 0.000000: the new layer's scores have saturated at 0 and 1.
COLLAPSED_BELOW = 5e-7


def _lower_learning_rate(learning_rate):
  return (f'a smaller --learning_rate (now {learning_rate:g}; the default is '
          f'{settings_module.RetrainSettings.learning_rate:g})')


def _diverged(step, learning_rate, loss_text):
  return PoetsError(
      f'Training diverged at step {step}: the cross entropy became '
      f'{loss_text}. Retry with {_lower_learning_rate(learning_rate)}. '
      'Nothing was exported.')


@dataclasses.dataclass
class LossCheck:
  """Stops a run whose loss explodes; warns once when it collapses.

  A new layer starts near the loss of guessing, log(class_count). Far above
  it (or NaN, or infinite) each step overshoots and the weights grow by
  orders of magnitude; at 0.000000 the softmax has saturated, so the scores
  label_image.py prints are 1 and 0, whatever the photo.
  """
  class_count: int
  learning_rate: float
  collapsed: bool = False

  def __call__(self, step, cross_entropy):
    guessing = np.log(max(self.class_count, 2))
    if not np.isfinite(cross_entropy):
      raise _diverged(step, self.learning_rate, 'NaN or infinite')
    if cross_entropy > EXPLODED_FACTOR * guessing:
      raise _diverged(step, self.learning_rate,
                      f'{cross_entropy:.3g}, over {EXPLODED_FACTOR} times '
                      f'that of guessing among {self.class_count} classes '
                      f'({guessing:.2f})')
    if cross_entropy < COLLAPSED_BELOW and not self.collapsed:
      self.collapsed = True
      logging.warning(
          'Step %d: Cross entropy = %f: the new layer\'s scores have '
          'saturated at 0 and 1, so they no longer say how sure it is; '
          'retry with %s.', step, cross_entropy,
          _lower_learning_rate(self.learning_rate))


@dataclasses.dataclass
class _TrainingGraph:
  """The training graph: the batches, the layer on top with its training
  ops, and what saves and summarises it."""
  graph: tf.Graph
  batches: _CachedBatches | _DistortedBatches
  layer: final_layer.FinalLayer
  variables: list  # What is trained, saved and exported.
  merged: tf.Tensor  # Every summary.
  saver: tf.compat.v1.train.Saver
  init: tf.Operation
  train_writer: object
  validation_writer: object


def _build_graph(settings, splits, class_count, module_spec, fine_tune):
  """The graph train() runs. The batches give bottlenecks (or, with
  `fine_tune`, the network's activations at the cut, which its trainable
  top turns into features); the new layer trains on top of them."""
  seed = settings.random_seed
  graph = tf.Graph()
  with graph.as_default():
    if seed is not None:
      tf.compat.v1.set_random_seed(seed)
    if settings.distortions.enabled:
      batches = _DistortedBatches(splits['training'], class_count,
                                  settings.train_batch_size,
                                  fine_tune.bottom if fine_tune else
                                  modules.load_module(module_spec),
                                  settings.distortions, seed)
    else:
      batches = _CachedBatches(splits['training'], class_count,
                               settings.train_batch_size, seed)
    features, fine_tuned = batches.bottlenecks, None
    if fine_tune:
      cut_input = fine_tuning.cut_input(fine_tune.cut, batches.bottlenecks)
      features = fine_tuning.top(fine_tune.cut, cut_input)
      fine_tuned = (fine_tuning.top_variables_of(graph),
                    fine_tune.learning_rate)
      _kernel_summaries(fine_tuned[0])
    layer = final_layer.add_final_retrain_ops(
        class_count, settings.final_tensor_name, features,
        batches.ground_truth, settings.learning_rate, fine_tuned)
    if fine_tune:
      layer.bottleneck_input = cut_input  # What evaluation feeds.
    merged = tf.compat.v1.summary.merge_all()
    # Only what was trained: export puts it on a freshly loaded module.
    variables = final_layer.layer_variables_of(graph)
    saver = tf.compat.v1.train.Saver(variables)
    init = tf.compat.v1.global_variables_initializer()
    # The fine-tuning graph holds the top's weights; the Graphs tab shows
    # the top in the exported graph instead (retrained_graph).
    suffix = '.fine_tune' if fine_tune else ''
    train_writer = summary_ops.event_writer(
        os.path.join(settings.summaries_dir, 'train'),
        None if fine_tune else graph, suffix)
    validation_writer = summary_ops.event_writer(
        os.path.join(settings.summaries_dir, 'validation'), suffix=suffix)
  return _TrainingGraph(graph, batches, layer, variables, merged, saver, init,
                        train_writer, validation_writer)


def _evaluation_step(session, net, step, check_loss, validation):
  """A training step that also evaluates, as the original's every
  --eval_step_interval: its summaries, its three log lines and the loss
  check (a LossCheck). Returns the validation accuracy, None without
  validation images. `validation` is (split, batch size, rng)."""
  layer = net.layer
  try:
    train_summary, _, bottlenecks, ground_truth = session.run(
        [net.merged, layer.train_step, layer.bottleneck_input,
         layer.ground_truth_input], net.batches.feed)
  except tf.errors.InvalidArgumentError:
    # The histogram summaries refuse NaN weights: a diverged run.
    if not all(np.isfinite(value).all()
               for value in session.run(net.variables)):
      raise _diverged(step, check_loss.learning_rate,
                      'NaN or infinite') from None
    raise
  net.train_writer.add_summary(train_summary, step)
  train_accuracy, cross_entropy = session.run(
      [layer.evaluation_step, layer.cross_entropy],
      {layer.bottleneck_input: bottlenecks,
       layer.ground_truth_input: ground_truth})
  logging.info('%s: Step %d: Train accuracy = %.1f%%', _now(), step,
               train_accuracy * 100)
  logging.info('%s: Step %d: Cross entropy = %f', _now(), step,
               cross_entropy)
  check_loss(step, cross_entropy)
  split, batch_size, rng = validation
  if not len(split.ground_truth):
    return None
  batch, truth, _ = _random_batch(split, batch_size, rng)
  validation_summary, validation_accuracy = session.run(
      [net.merged, layer.evaluation_step],
      {layer.bottleneck_input: batch, layer.ground_truth_input: truth})
  net.validation_writer.add_summary(validation_summary, step)
  logging.info('%s: Step %d: Validation accuracy = %.1f%% (N=%d)', _now(),
               step, validation_accuracy * 100, len(truth))
  return float(validation_accuracy)


def _save_checkpoint(session, saver, checkpoint_path):
  # The layer's values are kept in memory: export still has them.
  with files.only_a_warning('save the checkpoint',
                            (OSError, tf.errors.OpError)):
    os.makedirs(os.path.dirname(checkpoint_path) or '.', exist_ok=True)
    saver.save(session, checkpoint_path, write_state=False)


def _run_steps(session, net, settings, steps, check_loss, validation,
               save_intermediate):
  """Runs the training `steps` (a range), evaluating every
  --eval_step_interval steps and at the last; returns the steps done,
  whether a stop signal cut them short, and the validation curve."""
  # Cheaper per call than session.run.
  train_step = session.make_callable(net.layer.train_step,
                                     feed_list=list(net.batches.feed))
  curve = []
  steps_done = steps.start
  try:
    with interrupts.at_step_boundaries() as boundary:
      for step in steps:
        steps_done = step
        if boundary.stop_requested:
          raise KeyboardInterrupt
        if step % settings.eval_step_interval and step + 1 != steps.stop:
          train_step(*net.batches.feed.values())
        else:
          accuracy = _evaluation_step(session, net, step, check_loss,
                                      validation)
          if accuracy is not None:
            curve.append((step, accuracy))
        # The original's rule, whatever the evaluation interval.
        if (settings.intermediate_store_frequency > 0 and step > 0 and
            step % settings.intermediate_store_frequency == 0):
          save_intermediate(step)
      # A signal during the last step is raised as the block ends.
      steps_done = steps.stop
    return steps_done, False, curve
  except KeyboardInterrupt:
    logging.warning('Interrupted at step %d of %d; saving what was trained.',
                    steps_done, steps.stop)
    return steps_done, True, curve


def train(settings, splits, labels, module_spec=None, save_intermediate=None,
          fine_tune=None, final_test=True):
  """Trains the final layer on cached bottlenecks (or distorted images).

  `settings` is the run's RetrainSettings; `splits` maps split names to
  SplitBottlenecks; `module_spec` is the module to load into the training
  graph, needed only with distortions. `save_intermediate(step, layer)` is
  called at every step that is a multiple of
  `settings.intermediate_store_frequency`, with the layer's values then.
  Ctrl-C (or SIGTERM, see poets/interrupts.py) stops training after the
  current step and saves the checkpoint beside the finished one
  (files.interrupted_path); the caller still exports what was trained.

  With `fine_tune` (a fine_tuning.FineTuning) the splits hold cuts, not
  bottlenecks, and the fine-tuned blocks train with the layer, from the
  layer's values in `fine_tune.start`, for its steps.
  """
  class_count = len(labels)
  _warn_empty(splits, labels)
  rng = np.random.default_rng(settings.random_seed)
  net = _build_graph(settings, splits, class_count, module_spec, fine_tune)
  validation = (splits['validation'], _validation_batch_size(
      settings.validation_batch_size,
      len(splits['validation'].ground_truth)), rng)
  first_step, end_step = 0, settings.how_many_training_steps
  if fine_tune:
    first_step = fine_tune.first_step
    end_step = first_step + fine_tune.steps
  with tf.compat.v1.Session(graph=net.graph) as session:
    session.run(net.init)
    if fine_tune:
      with net.graph.as_default():  # Variable.load needs it.
        for variable in net.variables:
          if variable.op.name in fine_tune.start:
            variable.load(fine_tune.start[variable.op.name], session)

    def layer_values():
      return dict(zip([v.op.name for v in net.variables],
                      session.run(net.variables)))

    def save_layer(step):
      if save_intermediate:
        save_intermediate(step, layer_values())

    steps_done, interrupted, curve = _run_steps(
        session, net, settings, range(first_step, end_step),
        LossCheck(class_count, settings.learning_rate), validation,
        save_layer)
    _save_checkpoint(session, net.saver,
                     files.interrupted_path(settings.checkpoint_path)
                     if interrupted else settings.checkpoint_path)
    values = layer_values()
    net.train_writer.close()
    net.validation_writer.close()
    test = None
    if final_test and not interrupted:
      test = _final_test(session, net.layer, splits['testing'], settings,
                         labels, rng)
  return TrainingResult(steps_done, interrupted, test, curve, values)


def _final_test(session, layer, split, settings, labels, rng):
  if not len(split.ground_truth):
    logging.warning('No test images (every class is too small for a test '
                    'share); skipping the final test.')
    return None
  bottlenecks, truth, chosen = _random_batch(split, settings.test_batch_size,
                                             rng)
  evaluation = evaluate(session, layer, bottlenecks, truth, len(labels))
  evaluation.filenames = [split.filenames[index] for index in chosen]
  logging.info('Final test accuracy = %.1f%% (N=%d)',
               evaluation.accuracy * 100, evaluation.count)
  if settings.print_misclassified_test_images:
    logging.info('=== MISCLASSIFIED TEST IMAGES ===')
    for position, index in enumerate(chosen):
      if evaluation.predictions[position] != truth[position]:
        logging.info('%70s  %s', split.filenames[index],
                     labels[evaluation.predictions[position]])
  log_class_table(evaluation, labels)
  return evaluation
