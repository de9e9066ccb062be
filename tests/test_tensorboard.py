"""Step 3 of the codelab: the real TensorBoard server over retrain's logs.

Two short runs of the tiny module into one --summaries_dir (the second sets
the first aside), then `tensorboard --logdir` on 127.0.0.1, read through the
HTTP data API that TensorBoard's own pages use.
"""

import functools
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request

from google.protobuf import text_format
import pytest
import tensorflow as tf

from conftest import make_image_dir
from poets import pipeline
from poets import settings
from poets.core import modules

pytestmark = pytest.mark.slow  # Starting TensorBoard takes 10-30 s.

STEPS = 20
EVAL_INTERVAL = 10


@pytest.fixture(scope='module')
def logdir(tmp_path_factory, tf2_module):
  """A logdir as the README's, after two runs; returns (logdir, module
  folder name, the second run's RunResult)."""
  root = tmp_path_factory.mktemp('tensorboard')
  name = modules.resolve_module('', tf2_module, '').name
  config = settings.RetrainSettings(
      image_dir=make_image_dir(root / 'photos', per_class=10),
      output_graph=str(root / 'retrained_graph.pb'),
      output_labels=str(root / 'retrained_labels.txt'),
      bottleneck_dir=str(root / 'bottlenecks'),
      tfhub_module=tf2_module, model_dir=str(root / 'models'),
      how_many_training_steps=STEPS, eval_step_interval=EVAL_INTERVAL,
      summaries_dir=str(root / 'training_summaries' / name),
      checkpoint_path=str(root / 'checkpoint' / 'retrain'), random_seed=0)
  pipeline.run(config)
  result = pipeline.run(config)
  return root / 'training_summaries', name, result


def _free_port():
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def _get(url):
  with urllib.request.urlopen(url, timeout=30) as response:
    return response.read().decode('utf-8')


@pytest.fixture(scope='module')
def tensorboard(logdir, tmp_path_factory):
  """The README's `tensorboard --logdir` serving on loopback; yields a
  function that GETs a path from it."""
  folder, name, _ = logdir
  # The README's command: the console script that `pip install -r
  # requirements.txt` puts next to this Python (or on the PATH).
  command = shutil.which('tensorboard', path=os.path.dirname(
      sys.executable)) or shutil.which('tensorboard')
  assert command, 'tensorboard not found: pip install -r requirements.txt'
  port = _free_port()
  log = tmp_path_factory.mktemp('tensorboard_log') / 'tensorboard.log'
  with open(log, 'wb') as output:
    server = subprocess.Popen(
        [command, '--logdir', str(folder), '--host', '127.0.0.1', '--port',
         str(port)], stdout=output, stderr=subprocess.STDOUT,
        env={**os.environ, 'TF_CPP_MIN_LOG_LEVEL': '2'})
  base = f'http://127.0.0.1:{port}'
  try:
    # Up, and done reading the logdir: every run of the current one listed.
    deadline = time.monotonic() + 180
    wanted = {f'{name}/{run}' for run in ('train', 'validation',
                                          'retrained_graph')}
    while True:
      assert server.poll() is None, log.read_text()
      try:
        if wanted <= set(json.loads(_get(base + '/data/runs'))):
          break
      except (urllib.error.URLError, ConnectionError):
        pass
      assert time.monotonic() < deadline, log.read_text()
      time.sleep(0.5)
    yield lambda path, **query: _get(
        f'{base}{path}?{urllib.parse.urlencode(query)}')
  finally:
    server.terminate()
    try:
      server.wait(timeout=30)
    except subprocess.TimeoutExpired:
      server.kill()
      server.wait()


def compare_tag_names(a, b):
  """TensorBoard's run order (vz_sorting.compareTagNames, which its Graphs
  tab sorts runs with before opening the first): numbers compare as
  numbers, and "/", "_" and digits come before every other character."""
  def is_digit(c):
    return '0' <= c <= '9'

  def is_break(c):
    return c in '/_' or is_digit(c)

  def number_end(s, i):
    """Past the number whose first digit is s[i - 1]: digits, then
    optionally a fraction and an exponent."""
    state = 'natural'
    while i < len(s):
      c = s[i]
      if state in ('natural', 'real') and c in 'eE':
        state = 'exponent_sign'
      elif state == 'natural' and c == '.':
        state = 'real'
      elif state == 'exponent_sign' and (is_digit(c) or c in '+-'):
        state = 'exponent'
      elif not is_digit(c) or state == 'exponent_sign':
        break
      i += 1
    return i

  i = j = 0
  while True:
    if i == len(a):
      return 0 if j == len(b) else -1
    if j == len(b):
      return 1
    if is_digit(a[i]) and is_digit(b[j]):
      i_end, j_end = number_end(a, i + 1), number_end(b, j + 1)
      x, y = _leading_float(a[i:i_end]), _leading_float(b[j:j_end])
      if x != y:
        return -1 if x < y else 1
      i, j = i_end, j_end
      continue
    if is_break(a[i]) != is_break(b[j]):
      return -1 if is_break(a[i]) else 1
    if not is_break(a[i]) and a[i] != b[j]:
      return -1 if a[i] < b[j] else 1
    i += 1
    j += 1


def _leading_float(text):
  """JavaScript's parseFloat: the longest leading number."""
  for end in range(len(text), 0, -1):
    try:
      return float(text[:end])
    except ValueError:
      continue
  return 0.0


def test_current_run_comes_first_and_earlier_runs_are_kept(logdir,
                                                           tensorboard):
  folder, name, _ = logdir
  runs = json.loads(tensorboard('/data/runs'))
  (stamp,) = os.listdir(folder / name / pipeline.EARLIER_RUNS)
  earlier = f'{name}/{pipeline.EARLIER_RUNS}/{stamp}'
  current = [f'{name}/retrained_graph', f'{name}/train',
             f'{name}/validation']
  assert sorted(runs) == sorted(current + [
      f'{earlier}/retrained_graph', f'{earlier}/train',
      f'{earlier}/validation'])
  # The Time Series run list sorts by plain string order...
  assert sorted(runs)[:3] == current
  # ...and the Graphs tab opens on the first run with a graph, in its order.
  with_graph = json.loads(tensorboard('/data/plugin/graphs/info'))
  first = sorted(with_graph, key=functools.cmp_to_key(compare_tag_names))[0]
  assert first == f'{name}/retrained_graph'


def test_compare_tag_names_is_tensorboards_order():
  names = ['b', 'a/x', 'a_2', 'a_10', 'a.b', 'a', '~z', 'validation']
  assert sorted(names, key=functools.cmp_to_key(compare_tag_names)) == [
      'a', 'a_2', 'a_10', 'a/x', 'a.b', 'b', 'validation', '~z']


@pytest.mark.parametrize('run', ['train', 'validation'])
@pytest.mark.parametrize('tag', ['accuracy', 'cross_entropy'])
def test_scalar_curves(logdir, tensorboard, run, tag):
  _, name, result = logdir
  points = json.loads(tensorboard('/data/plugin/scalars/scalars',
                                  run=f'{name}/{run}', tag=tag))
  steps = [step for _, step, _ in points]
  assert steps == list(range(0, STEPS, EVAL_INTERVAL)) + [STEPS - 1]
  values = [value for _, _, value in points]
  if tag == 'accuracy':
    assert all(0 <= value <= 1 for value in values)
  else:
    assert all(value > 0 for value in values)
  if (run, tag) == ('validation', 'accuracy'):
    assert values == pytest.approx(
        [accuracy for _, accuracy in result.training.validation_curve])


def test_graph_shows_input_output_and_the_module_inside_one_scope(
    logdir, tensorboard):
  _, name, _ = logdir
  graph_def = text_format.Parse(
      tensorboard('/data/plugin/graphs/graph', run=f'{name}/retrained_graph'),
      tf.compat.v1.GraphDef())
  nodes = {node.name: node for node in graph_def.node}
  assert nodes['Placeholder'].op == 'Placeholder'
  assert nodes['final_result'].op == 'Softmax'
  scope = name.replace('~', '_').lstrip('_')
  assert nodes[f'{scope}/Mean'].op == 'Mean'  # Inside the tiny module.
  assert not graph_def.library.function
  assert not [n for n in graph_def.node if n.op.endswith('PartitionedCall')]
