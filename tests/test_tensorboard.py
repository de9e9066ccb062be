"""Step 3 of the codelab: the real TensorBoard server over retrain's logs.

Two short runs of the tiny module into one --summaries_dir (the second sets
the first aside) and a two-run experiments.py sweep beside them, then one
`tensorboard --logdir` on 127.0.0.1 over both, read through the HTTP data API
that TensorBoard's own pages use.
"""

import contextlib
import functools
import json
import os
import re
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

from absl import flags
from conftest import make_image_dir
from poets import cli
from poets.core import modules
from poets import pipeline
from poets import summaries
from poets import settings
from poets.extras import dashboards
import experiments as experiments_script

pytestmark = pytest.mark.slow  # Starting TensorBoard takes 10-30 s.

STEPS = 20
EVAL_INTERVAL = 10
SWEPT_RATES = ['0.01', '0.5']


def _sweep(root, photos, tf2_module):
  """experiments.py's own main, in-process, sweeping the learning rate into
  <root>/training_summaries/experiments; returns the experiment's name."""
  flags.FLAGS.unparse_flags()
  try:
    cli.parse_flags_or_exit([
        'experiments.py', f'--image_dir={photos}',
        f'--tfhub_module={tf2_module}', f'--model_dir={root / "models"}',
        f'--bottleneck_dir={root / "bottlenecks"}',
        f'--experiments_dir={root / "experiments"}',
        f'--summaries_dir={root / "training_summaries" / "experiments"}',
        f'--how_many_training_steps={STEPS}', '--random_seed=0',
        '--sweep', 'learning_rate=' + ','.join(SWEPT_RATES)])
    experiments_script.main(['experiments.py'])
  finally:
    flags.FLAGS.unparse_flags()
  (name,) = os.listdir(root / 'training_summaries' / 'experiments')
  return name


@pytest.fixture(scope='module')
def logdir(tmp_path_factory, tf2_module):
  """A logdir as the README's, after two runs and a sweep; returns (logdir,
  module folder name, the second run's RunResult, the sweep's name)."""
  root = tmp_path_factory.mktemp('tensorboard')
  name = modules.resolve_module('', tf2_module, '').name
  photos = make_image_dir(root / 'photos', per_class=10)
  config = settings.RetrainSettings(
      image_dir=photos,
      output_graph=str(root / 'retrained_graph.pb'),
      output_labels=str(root / 'retrained_labels.txt'),
      bottleneck_dir=str(root / 'bottlenecks'),
      tfhub_module=tf2_module, model_dir=str(root / 'models'),
      how_many_training_steps=STEPS, eval_step_interval=EVAL_INTERVAL,
      summaries_dir=str(root / 'training_summaries' / name),
      checkpoint_path=str(root / 'checkpoint' / 'retrain'), random_seed=0)
  pipeline.run(config)
  result = pipeline.run(config)
  sweep = _sweep(root, photos, tf2_module)
  return root / 'training_summaries', name, result, sweep


def _free_port():
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def _get(url):
  with urllib.request.urlopen(url, timeout=30) as response:
    return response.read().decode('utf-8')


@contextlib.contextmanager
def serve(folder, wanted, log):
  """The README's `tensorboard --logdir folder` serving on loopback, once it
  lists every run in `wanted`; yields a _Server that GETs a path from it.
  The server's output goes to the file `log`."""
  # The README's command: the console script that `pip install -r
  # requirements.txt` puts next to this Python (or on the PATH).
  command = shutil.which('tensorboard', path=os.path.dirname(
      sys.executable)) or shutil.which('tensorboard')
  assert command, 'tensorboard not found: pip install -r requirements.txt'
  port = _free_port()
  with open(log, 'wb') as output:
    server = subprocess.Popen(
        [command, '--logdir', str(folder), '--host', '127.0.0.1', '--port',
         str(port)], stdout=output, stderr=subprocess.STDOUT,
        env={**os.environ, 'TF_CPP_MIN_LOG_LEVEL': '2'})
  base = f'http://127.0.0.1:{port}'
  try:
    # Up, and done reading the logdir: every run wanted is listed.
    deadline = time.monotonic() + 180
    while True:
      assert server.poll() is None, log.read_text()
      try:
        if wanted <= set(json.loads(_get(base + '/data/runs'))):
          break
      except (urllib.error.URLError, ConnectionError):
        pass
      assert time.monotonic() < deadline, log.read_text()
      time.sleep(0.5)
    yield _Server(base)
  finally:
    server.terminate()
    try:
      server.wait(timeout=30)
    except subprocess.TimeoutExpired:
      server.kill()
      server.wait()


@pytest.fixture(scope='module')
def tensorboard(logdir, tmp_path_factory):
  """`tensorboard --logdir` over `logdir`, done reading the current run and
  the sweep."""
  folder, name, _, sweep = logdir
  wanted = {f'{name}/{run}' for run in pipeline.RUN_FOLDERS} | {
      f'experiments/{sweep}/learning_rate={rate}' for rate in SWEPT_RATES}
  log = tmp_path_factory.mktemp('tensorboard_log') / 'tensorboard.log'
  with serve(folder, wanted, log) as server:
    yield server


class _Server:
  """GETs a path with a query from the server: `server(path, **query)`."""

  def __init__(self, base):
    self.base = base

  def url(self, path, **query):
    return f'{self.base}{path}?{urllib.parse.urlencode(query)}'

  def __call__(self, path, **query):
    return _get(self.url(path, **query))


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
  folder, name, _, _ = logdir
  runs = [run for run in json.loads(tensorboard('/data/runs'))
          if run.startswith(f'{name}/')]
  (stamp,) = os.listdir(folder / name / summaries.EARLIER_RUNS)
  earlier = f'{name}/{summaries.EARLIER_RUNS}/{stamp}'
  current = sorted(f'{name}/{run}' for run in pipeline.RUN_FOLDERS)
  assert sorted(runs) == current + sorted(
      f'{earlier}/{run}' for run in pipeline.RUN_FOLDERS)
  # The Time Series run list sorts by plain string order...
  assert sorted(runs)[:len(current)] == current
  # ...and the Graphs tab opens on the first run with a graph, in its order.
  with_graph = [run for run in json.loads(
      tensorboard('/data/plugin/graphs/info')) if run.startswith(f'{name}/')]
  first = sorted(with_graph, key=functools.cmp_to_key(compare_tag_names))[0]
  assert first == f'{name}/retrained_graph'


def test_compare_tag_names_is_tensorboards_order():
  names = ['b', 'a/x', 'a_2', 'a_10', 'a.b', 'a', '~z', 'validation']
  assert sorted(names, key=functools.cmp_to_key(compare_tag_names)) == [
      'a', 'a_2', 'a_10', 'a/x', 'a.b', 'b', 'validation', '~z']


@pytest.mark.parametrize('run', ['train', 'validation'])
@pytest.mark.parametrize('tag', ['accuracy', 'cross_entropy'])
def test_scalar_curves(logdir, tensorboard, run, tag):
  _, name, result, _ = logdir
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
  _, name, _, _ = logdir
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


def test_the_dashboards_of_a_run_and_a_sweep_are_enabled(tensorboard):
  wanted = {'projector', 'images', 'pr_curves', 'hparams', 'text'}
  # The Projector decides in the background, after the first asking.
  deadline = time.monotonic() + 60
  while True:
    listing = json.loads(tensorboard('/data/plugins_listing'))
    enabled = {plugin for plugin in wanted if listing[plugin]['enabled']}
    if enabled == wanted or time.monotonic() > deadline:
      break
    time.sleep(0.5)
  assert enabled == wanted


def test_projector_shows_the_bottlenecks_with_labels_and_thumbnails(
    logdir, tensorboard):
  _, name, result, _ = logdir
  run = f'{name}/{dashboards.PROJECTOR_RUN}'
  assert run in json.loads(tensorboard('/data/plugin/projector/runs'))
  (embedding,) = json.loads(tensorboard('/data/plugin/projector/info',
                                        run=run))['embeddings']
  points = sum(result.split_sizes.values())  # Under every cap.
  assert embedding['tensorName'] == 'bottlenecks'
  assert embedding['tensorShape'] == [points, 8]
  assert embedding['metadataPath'] and embedding['sprite']['imagePath']
  metadata = tensorboard('/data/plugin/projector/metadata', run=run,
                         name='bottlenecks').splitlines()
  assert metadata[0] == 'label\tsplit\tfile' and len(metadata) == points + 1
  labels = {line.split('\t')[0] for line in metadata[1:]}
  assert labels == set(result.labels)
  splits = {line.split('\t')[1] for line in metadata[1:]}
  assert splits == {'training', 'validation', 'testing'}
  with urllib.request.urlopen(tensorboard.url(
      '/data/plugin/projector/sprite_image', run=run,
      name='bottlenecks')) as response:
    assert response.read(2) == b'\xff\xd8'  # A JPEG.


def test_test_set_images_pr_curves_and_settings(logdir, tensorboard):
  _, name, result, _ = logdir
  run = f'{name}/{dashboards.TEST_RUN}'
  images = json.loads(tensorboard('/data/plugin/images/tags'))
  assert 'confusion_matrix' in images[run]
  curves = json.loads(tensorboard('/data/plugin/pr_curves/tags'))[run]
  assert set(curves) == {f'pr_curves/{label}' for label in result.labels}
  texts = json.loads(tensorboard('/data/plugin/text/tags'))
  assert set(texts[run]) == {'settings', 'network'}
  (settings_text,) = json.loads(tensorboard('/data/plugin/text/text', run=run,
                                            tag='settings'))
  # The Markdown table, drawn as HTML; a setting changed from the default in
  # bold.
  assert re.search(r'<strong>how_many_training_steps</strong></td>\s*'
                   rf'<td><strong><code>{STEPS}</code>', settings_text['text'])


def test_hparams_lists_every_run_of_the_sweep(logdir, tensorboard):
  _, _, _, sweep = logdir
  experiment = json.loads(tensorboard('/data/plugin/hparams/experiment',
                                      request=json.dumps(
                                          {'experimentName': ''})))
  (info,) = experiment['hparamInfos']
  assert info['name'] == 'learning_rate'
  assert info['domainInterval'] == {'minValue': 0.01, 'maxValue': 0.5}
  metrics = {m['name']['tag'] for m in experiment['metricInfos']}
  assert {'test_accuracy', 'test_cross_entropy', 'run_seconds'} <= metrics
  groups = json.loads(tensorboard(
      '/data/plugin/hparams/session_groups', request=json.dumps({
          'experimentName': '', 'allowedStatuses': ['STATUS_SUCCESS'],
          'startIndex': 0, 'sliceSize': 10})))['sessionGroups']
  assert sorted(group['hparams']['learning_rate'] for group in groups) == [
      float(rate) for rate in SWEPT_RATES]
  for group in groups:
    (session,) = group['sessions']
    assert session['name'].startswith(f'experiments/{sweep}/learning_rate=')
    accuracy = [m['value'] for m in session['metricValues']
                if m['name']['tag'] == 'test_accuracy']
    assert len(accuracy) == 1 and 0 <= accuracy[0] <= 1
