"""Tests for poets/training.py: the new layer, its loop and its summaries."""

import contextlib
import glob
import logging as std_logging
import os
import re
import signal
import threading

import numpy as np
import pytest
import tensorflow as tf

from poets.core import bottlenecks
from poets.core import feeds
from poets.core import final_layer
from poets.core import graph_names
from poets.core import image_listing
from poets.core import modules
from poets.core import training
from poets import settings
from poets.errors import PoetsError


def _events(directory):
  """(scalar tags, has a graph) of the event files in a folder."""
  tags, graph = set(), False
  for path in glob.glob(os.path.join(directory, 'events.out.tfevents.*')):
    for event in tf.compat.v1.train.summary_iterator(path):
      graph = graph or bool(event.graph_def)
      tags.update(value.tag for value in event.summary.value)
  return tags, graph


def test_separable_classes_reach_high_test_accuracy(retrained):
  _, result = retrained
  assert result.training.test.accuracy >= 0.9
  assert result.training.steps_done == 300
  assert not result.training.interrupted
  assert result.training.validation_curve[-1][0] == 299


def test_log_lines_follow_the_original(retrained, caplog, tmp_path):
  config, _ = retrained
  from poets import pipeline
  rerun = config.replace(
      how_many_training_steps=11, eval_step_interval=10,
      summaries_dir=str(tmp_path / 's'),
      checkpoint_path=str(tmp_path / 'c' / 'x'),
      output_graph=str(tmp_path / 'g.pb'),
      output_labels=str(tmp_path / 'labels.txt'), saved_model_dir='',
      intermediate_store_frequency=0)
  pipeline.run(rerun)
  text = caplog.text
  assert 'Step 0: Train accuracy = ' in text
  assert 'Step 10: Cross entropy = ' in text
  assert 'Step 10: Validation accuracy = ' in text
  assert 'Final test accuracy = ' in text
  assert '=== MISCLASSIFIED TEST IMAGES ===' in text
  assert 'precision  recall  count' in text and 'Confusion matrix' in text


def test_summaries_hold_scalars_histograms_and_graph(retrained):
  config, _ = retrained
  train_tags, train_graph = _events(os.path.join(config.summaries_dir,
                                                 'train'))
  validation_tags, _ = _events(os.path.join(config.summaries_dir,
                                            'validation'))
  expected = {'accuracy', 'cross_entropy', 'activations',
              'final_retrain_ops/Wx_plus_b/pre_activations',
              'final_retrain_ops/weights/summaries/mean',
              'final_retrain_ops/weights/summaries/stddev',
              'final_retrain_ops/weights/summaries/histogram',
              'final_retrain_ops/biases/summaries/max'}
  assert expected <= train_tags
  assert expected <= validation_tags
  assert train_graph
  _, exported_graph = _events(os.path.join(config.summaries_dir,
                                           'retrained_graph'))
  assert exported_graph


def _split(rng, count, class_count, size=4):
  truth = np.sort(rng.integers(0, class_count, count))
  values = np.eye(class_count, size, dtype=np.float32)[truth] * 5
  values += rng.normal(0, 0.1, values.shape).astype(np.float32)
  return bottlenecks.SplitBottlenecks(values, truth.astype(np.int64),
                                      [f'img{i}.jpg' for i in range(count)])


def _two_class_run(tmp_path, count, **overrides):
  """Three splits of `count` separable two-class bottlenecks, and settings
  that train on them with their checkpoint and summaries under tmp_path."""
  rng = np.random.default_rng(0)
  splits = {name: _split(rng, count, 2) for name in ('training', 'validation',
                                                     'testing')}
  return splits, settings.RetrainSettings(
      summaries_dir=str(tmp_path / 's'),
      checkpoint_path=str(tmp_path / 'c' / 'x'), random_seed=1, **overrides)


def test_empty_validation_and_test_shares_do_not_crash(tmp_path, caplog):
  rng = np.random.default_rng(0)
  empty = bottlenecks.SplitBottlenecks(np.zeros([0, 4], np.float32),
                                       np.zeros([0], np.int64), [])
  splits = {'training': _split(rng, 40, 2), 'validation': empty,
            'testing': empty}
  config = settings.RetrainSettings(
      how_many_training_steps=20, summaries_dir=str(tmp_path / 's'),
      checkpoint_path=str(tmp_path / 'c' / 'x'), random_seed=1)
  result = training.train(config, splits, ['a', 'b'])
  assert result.test is None and result.steps_done == 20
  assert 'No validation images for a, b' in caplog.text
  assert 'skipping the final test' in caplog.text


@pytest.mark.parametrize('batch_size, expected', [(100, 7), (7, 7), (3, 3),
                                                   (-1, 7)])
def test_a_validation_set_no_larger_than_the_batch_is_used_whole(
    tmp_path, caplog, batch_size, expected):
  """Drawing 100 with replacement from 7 would make the curve jump."""
  rng = np.random.default_rng(0)
  splits = {'training': _split(rng, 40, 2), 'validation': _split(rng, 7, 2),
            'testing': _split(rng, 5, 2)}
  config = settings.RetrainSettings(
      how_many_training_steps=21, eval_step_interval=10,
      validation_batch_size=batch_size, summaries_dir=str(tmp_path / 's'),
      checkpoint_path=str(tmp_path / 'c' / 'x'), random_seed=1)
  training.train(config, splits, ['a', 'b'])
  counts = re.findall(r'Validation accuracy = [\d.]+% \(N=(\d+)\)',
                      caplog.text)
  assert counts == [str(expected)] * 3
  said = caplog.text.count('Validating on all 7 validation images')
  assert said == (1 if batch_size >= 7 else 0)


def test_each_batch_size_sets_its_own_count(tmp_path, caplog):
  """--validation_batch_size sizes each evaluation, --test_batch_size the
  final test: the N a user reads on each line."""
  rng = np.random.default_rng(0)
  splits = {'training': _split(rng, 40, 2), 'validation': _split(rng, 9, 2),
            'testing': _split(rng, 8, 2)}
  config = settings.RetrainSettings(
      how_many_training_steps=11, validation_batch_size=5, test_batch_size=3,
      summaries_dir=str(tmp_path / 's'),
      checkpoint_path=str(tmp_path / 'c' / 'x'), random_seed=1)
  training.train(config, splits, ['a', 'b'])
  assert re.findall(r'Validation accuracy = [\d.]+% \(N=(\d+)\)',
                    caplog.text) == ['5', '5']
  assert re.findall(r'Final test accuracy = [\d.]+% \(N=(\d+)\)',
                    caplog.text) == ['3']


def test_a_test_set_larger_than_a_batch_is_scored_whole_a_batch_at_a_time():
  """Batches bound the memory of a large test set; each image is scored
  once, the last partial batch too, as in one run over all of them."""
  count = 2 * graph_names.BATCH_SIZE + 6
  split = _split(np.random.default_rng(0), count, 2)
  graph = tf.Graph()
  with graph.as_default():
    layer = final_layer.add_final_retrain_ops(
        2, 'final_result', tf.constant(split.bottlenecks),
        tf.constant(split.ground_truth), learning_rate=0.01)
    init = tf.compat.v1.global_variables_initializer()
  with tf.compat.v1.Session(graph=graph) as session:
    session.run(init)
    evaluation = training.evaluate(session, layer, split.bottlenecks,
                                   split.ground_truth, 2)
    whole = session.run(layer.final_tensor,
                        {layer.bottleneck_input: split.bottlenecks})
  assert evaluation.count == count and evaluation.confusion.sum() == count
  np.testing.assert_allclose(evaluation.scores, whole, rtol=1e-5)
  assert list(evaluation.predictions) == list(whole.argmax(1))
  assert evaluation.accuracy == pytest.approx(
      np.mean(whole.argmax(1) == split.ground_truth))


def test_sampling_is_uniform_over_classes_and_seeded():
  rng = np.random.default_rng(0)
  split = _split(rng, 200, 3)
  split.ground_truth[:] = np.array([0] * 180 + [1] * 10 + [2] * 10)

  def draw(seed):
    graph = tf.Graph()
    with graph.as_default():
      tf.compat.v1.set_random_seed(seed)
      batches = training._CachedBatches(split, 3, 3000, seed)
    with tf.compat.v1.Session(graph=graph) as session:
      return session.run(batches.ground_truth, batches.feed)

  truth = draw(5)
  counts = np.bincount(truth, minlength=3) / len(truth)
  np.testing.assert_allclose(counts, [1 / 3] * 3, atol=0.05)
  np.testing.assert_array_equal(truth, draw(5))


def test_ctrl_c_stops_cleanly_and_saves(tmp_path, caplog):
  from conftest import ctrl_c_when_logged
  splits, config = _two_class_run(tmp_path, 30,
                                  how_many_training_steps=1000)
  with ctrl_c_when_logged('Step 20: Validation accuracy'):
    result = training.train(config, splits, ['a', 'b'])
  assert result.interrupted and result.steps_done == 20
  assert 'Interrupted at step 20 of 1000' in caplog.text
  assert 'Final test accuracy' not in caplog.text
  # Beside where a finished run's checkpoint goes, never over it, holding
  # the layer as trained so far (what export then uses).
  saved = tf.train.load_checkpoint(str(tmp_path / 'c' / 'x.interrupted'))
  assert not os.path.exists(str(tmp_path / 'c' / 'x.index'))
  assert result.layer
  for name, value in result.layer.items():
    np.testing.assert_array_equal(saved.get_tensor(name), value)
  # Trained, not the initial weights (truncated normal, stddev 0.001).
  assert np.abs(result.layer['final_retrain_ops/weights/final_weights']
                ).max() > 0.01


class _SignalFromAFinaliser(std_logging.Handler):
  """SIGTERM sent from inside a finaliser, once a log line holds `text`:
  Python drops an exception raised there, so a handler that raised would
  leave training running on."""

  def __init__(self, text):
    super().__init__()
    self.text = text

  def emit(self, record):
    if self.text in record.getMessage():
      _Finalised()  # Collected at once, which sends the signal.


class _Finalised:

  def __del__(self):
    os.kill(os.getpid(), signal.SIGTERM)


@pytest.mark.parametrize('steps, stopped_at', [(1000, 21), (21, 21)])
def test_sigterm_stops_training_at_the_next_step_wherever_it_lands(
    tmp_path, caplog, steps, stopped_at):
  # (21, 21): the signal comes during the last step, and still stops the
  # run before its final test and finished export.
  from poets import interrupts
  splits, config = _two_class_run(tmp_path, 30,
                                  how_many_training_steps=steps)
  handler = _SignalFromAFinaliser('Step 20: Validation accuracy')
  std_logging.getLogger().addHandler(handler)
  try:
    with interrupts.StopSignals() as stop:
      result = training.train(config, splits, ['a', 'b'])
  finally:
    std_logging.getLogger().removeHandler(handler)
  assert stop.received == signal.SIGTERM and stop.exit_code == 143
  assert result.interrupted and result.steps_done == stopped_at
  assert f'Interrupted at step {stopped_at} of {steps}' in caplog.text
  assert 'Final test accuracy' not in caplog.text
  assert tf.train.load_checkpoint(str(tmp_path / 'c' / 'x.interrupted'))


class _Hung(Exception):
  pass


@contextlib.contextmanager
def _fails_if_hung(seconds):
  """Raises _Hung in the main thread after `seconds`: a lock's wait there
  is interrupted by a signal whose handler raises."""
  def hung(signum, frame):
    del signum, frame  # Unused.
    raise _Hung(f'still running after {seconds} s')

  previous = signal.signal(signal.SIGUSR1, hung)
  watchdog = threading.Timer(seconds, os.kill, (os.getpid(), signal.SIGUSR1))
  watchdog.start()
  try:
    yield
  finally:
    watchdog.cancel()
    signal.signal(signal.SIGUSR1, previous)


def test_sigterm_while_tensorflow_holds_its_session_lock_does_not_hang(
    tmp_path, monkeypatch):
  # TensorFlow's session lock (lock_util.GroupLock) takes and gives back its
  # inner lock without try/finally: an exception raised there left it taken,
  # and the save after training waited on it for ever (a sweep's SIGTERM
  # test hung so in CI). Should that come back, the test fails where it
  # hangs instead of hanging CI.
  from tensorflow.python.util import lock_util
  from poets import interrupts
  splits, config = _two_class_run(tmp_path, 30, how_many_training_steps=1000)
  armed = []
  locked_check = lock_util.GroupLock._another_group_active

  def signal_while_locked(self, group_id):  # Called with the lock taken.
    if armed and armed.pop():
      os.kill(os.getpid(), signal.SIGTERM)
    return locked_check(self, group_id)

  class _Arm(std_logging.Handler):

    def emit(self, record):
      if 'Step 20: Validation accuracy' in record.getMessage():
        armed.append(True)

  monkeypatch.setattr(lock_util.GroupLock, '_another_group_active',
                      signal_while_locked)
  handler = _Arm()
  std_logging.getLogger().addHandler(handler)
  try:
    with _fails_if_hung(60), interrupts.StopSignals():
      result = training.train(config, splits, ['a', 'b'])
  finally:
    std_logging.getLogger().removeHandler(handler)
  assert result.interrupted and 20 < result.steps_done < 1000
  assert tf.train.load_checkpoint(str(tmp_path / 'c' / 'x.interrupted'))


@pytest.mark.filterwarnings(
    'ignore::pytest.PytestUnraisableExceptionWarning')  # The dropped one.
def test_a_stop_whose_exception_was_lost_before_training_stops_it_at_once(
    tmp_path):
  from poets import interrupts
  splits, config = _two_class_run(tmp_path, 30, how_many_training_steps=1000)
  with interrupts.StopSignals() as stop:
    _Finalised()  # Python drops the KeyboardInterrupt raised in there.
    result = training.train(config, splits, ['a', 'b'])
  assert stop.exit_code == 143
  assert result.interrupted and result.steps_done == 0


@pytest.mark.parametrize('flip', [True, False])
def test_distortions_train_through_the_module(tmp_path, tf2_module, flip):
  from conftest import make_image_dir
  image_dir = make_image_dir(tmp_path / 'p', per_class=8)
  lists = image_listing.create_image_lists(image_dir, 0, 0)
  spec = modules.ModuleSpec(tf2_module, 'tiny')
  with tf.Graph().as_default():
    module = modules.load_module(spec)
  splits, _ = bottlenecks.cache_bottlenecks(lists, module,
                                            str(tmp_path / 'b'))
  config = settings.RetrainSettings(
      how_many_training_steps=60, eval_step_interval=20, learning_rate=0.05,
      summaries_dir=str(tmp_path / 's'),
      checkpoint_path=str(tmp_path / 'c' / 'x'), random_seed=1,
      flip_left_right=flip, random_crop=10, random_scale=10,
      random_brightness=10)
  splits['testing'] = splits['training']
  result = training.train(config, splits, lists.labels, spec)
  assert result.test.accuracy >= 0.9


@pytest.mark.parametrize('distorted', [False, True])
def test_same_seed_same_layer(tmp_path, tf2_module, distorted):
  """--random_seed makes a run repeat exactly, distortions included."""
  from conftest import make_image_dir
  image_dir = make_image_dir(tmp_path / 'p', per_class=6)
  lists = image_listing.create_image_lists(image_dir, 0, 0)
  spec = modules.ModuleSpec(tf2_module, 'tiny')
  with tf.Graph().as_default():
    module = modules.load_module(spec)
  splits, _ = bottlenecks.cache_bottlenecks(lists, module,
                                            str(tmp_path / 'b'))
  weights = []
  for run in range(2):
    config = settings.RetrainSettings(
        how_many_training_steps=30, eval_step_interval=10, train_batch_size=8,
        summaries_dir=str(tmp_path / f's{run}'),
        checkpoint_path=str(tmp_path / f'c{run}' / 'x'), random_seed=4,
        random_crop=20 if distorted else 0,
        random_brightness=20 if distorted else 0)
    training.train(config, splits, lists.labels, spec)
    weights.append(tf.train.load_checkpoint(config.checkpoint_path).get_tensor(
        'final_retrain_ops/weights/final_weights'))
  np.testing.assert_array_equal(weights[0], weights[1])


@pytest.mark.parametrize('frequency, steps, expected', [
    (25, 100, [25, 50, 75]),
    (7, 60, [7, 14, 21, 28, 35, 42, 49, 56]),
])
def test_intermediate_graphs_at_every_multiple_of_the_frequency(
    tmp_path, frequency, steps, expected):
  # The original's rule, whatever --eval_step_interval (here the default 10).
  splits, config = _two_class_run(
      tmp_path, 20, how_many_training_steps=steps,
      intermediate_store_frequency=frequency)
  saved = []
  training.train(config, splits, ['a', 'b'], None,
                 lambda step, *_: saved.append(step))
  assert saved == expected


def test_training_bottlenecks_are_fed_without_a_copy():
  # A copy of all of them would double their memory at 100,000 photos.
  rng = np.random.default_rng(0)
  split = _split(rng, 50, 2)
  aligned = feeds.feedable_empty(split.bottlenecks.shape)
  aligned[...] = split.bottlenecks
  assert aligned.ctypes.data % feeds.FEED_ALIGNMENT == 0
  with tf.Graph().as_default():
    [fed] = training._CachedBatches(
        bottlenecks.SplitBottlenecks(aligned, split.ground_truth,
                                     split.filenames), 2, 10, 0).feed.values()
    assert fed is aligned
    # Any other array is copied once, aligned, rather than at every step.
    [fed] = training._CachedBatches(split, 2, 10, 0).feed.values()
    assert fed.ctypes.data % feeds.FEED_ALIGNMENT == 0
    np.testing.assert_array_equal(fed, split.bottlenecks)


@pytest.mark.parametrize('learning_rate, loss', [
    (1e38, 'NaN or infinite'),
    (1e30, r'[\d.]+e\+\d+, over 100 times that of guessing among 2 classes '
           r'\(0\.69\)'),
])
def test_a_loss_that_explodes_stops_training_with_the_fix(
    tmp_path, learning_rate, loss):
  splits, config = _two_class_run(tmp_path, 40, how_many_training_steps=20,
                                  learning_rate=learning_rate)
  # Photos unlike their labels, as real ones can be: a step that large
  # overshoots instead of separating them.
  rng = np.random.default_rng(0)
  splits['training'] = bottlenecks.SplitBottlenecks(
      rng.normal(size=[40, 4]).astype(np.float32),
      rng.integers(0, 2, 40), splits['training'].filenames)
  with pytest.raises(PoetsError, match=(
      rf'^Training diverged at step 0: the cross entropy became {loss}\. '
      rf'Retry with a smaller --learning_rate \(now {re.escape(f"{learning_rate:g}")}; the '
      r'default is 0\.01\)\. Nothing was exported\.$')):
    training.train(config, splits, ['a', 'b'])


def test_a_loss_that_collapses_to_zero_warns_once_with_the_fix(tmp_path,
                                                               caplog):
  splits, config = _two_class_run(tmp_path, 40, how_many_training_steps=30,
                                  eval_step_interval=10, learning_rate=100)
  result = training.train(config, splits, ['a', 'b'])
  warned = [r.getMessage() for r in caplog.records
            if 'saturated' in r.getMessage()]
  assert warned == [
      "Step 0: Cross entropy = 0.000000: the new layer's scores have "
      'saturated at 0 and 1, so they no longer say how sure it is; retry '
      'with a smaller --learning_rate (now 100; the default is 0.01).']
  assert result.steps_done == 30  # A warning: the run goes on.


def test_the_default_learning_rate_neither_stops_nor_warns(tmp_path, caplog):
  splits, config = _two_class_run(tmp_path, 40, how_many_training_steps=200)
  training.train(config, splits, ['a', 'b'])
  assert not [r for r in caplog.records if r.levelname == 'WARNING']
