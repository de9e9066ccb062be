"""Shared test fixtures: tiny modules and synthetic photo folders.

Everything here is built in the test's temporary folder in well under a
second, so the suite runs offline and fast. The tiny modules see colour: their
bottleneck is a fixed projection of each image's mean and spread of R, G and
B, so solid-colour classes are separable and training can be checked.
"""

import collections
import contextlib
import functools
import http.server
import io
import os
import subprocess
import threading

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
# As the scripts import TensorFlow (startup.import_tensorflow).
os.environ.setdefault('TF_USE_LEGACY_KERAS', '1')

from absl import logging  # noqa: E402
import hypothesis  # noqa: E402
import logging as std_logging  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402
import pytest  # noqa: E402

# As retrain.py runs: INFO lines are part of what users see.
logging.set_verbosity(logging.INFO)

# Property tests draw the same examples on every run and machine, so a
# failure repeats and the suite's time does not swing with the draw.
hypothesis.settings.register_profile('repeatable', derandomize=True,
                                     database=None)
hypothesis.settings.load_profile('repeatable')

TINY_SIZE = 32
TINY_BOTTLENECK = 8
CLASS_COLOURS = {'red': (220, 30, 30), 'green': (30, 200, 40),
                 'blue': (30, 40, 220)}
# Names the file system allows and people, cameras or scripts make: not
# UTF-8, control characters, shell and format characters, and the longest a
# name may be (255 bytes).
ODD_FILE_NAMES = [
    os.fsdecode(b'caf\xe9 latin-1.jpg'), 'new\nline.jpg', ' spaces .jpg',
    '-leading-dash.jpg', '100%.jpg', '%s%d%n.jpg', 'ünïcødé 🌸.jpg',
    'back\\slash.jpg', 'quote\'".jpg', 'semi;colon&$(x).jpg',
    'n' * 251 + '.jpg', 'é' * 125 + '.jpg']


def _tiny_weights():
  """Keeps the six colour statistics and adds two mixed ones."""
  mixed = np.random.default_rng(7).normal(size=[6, TINY_BOTTLENECK - 6])
  return np.concatenate([np.eye(6), mixed], axis=1).astype(np.float32)


def _tiny_features(images, weights):
  import tensorflow as tf  # Here, so a run's controller never loads it.
  mean = tf.reduce_mean(images, axis=[1, 2])
  spread = tf.math.reduce_std(images, axis=[1, 2])
  # Scaled so the default learning rate trains in a few hundred steps.
  return 10.0 * tf.concat([mean, spread], 1) @ weights


def make_tf2_module(path, size=TINY_SIZE):
  """A TF2 SavedModel feature-vector module: [N,size,size,3] -> [N,8]."""
  import tensorflow as tf
  module = tf.Module()
  module.weights = tf.Variable(_tiny_weights())
  module.__call__ = tf.function(
      lambda images: _tiny_features(images, module.weights),
      input_signature=[tf.TensorSpec([None, size, size, 3], tf.float32)])
  tf.saved_model.save(module, str(path))
  return str(path)


def make_tf1_hub_module(path, size=TINY_SIZE):
  """A legacy TF1 Hub format module: a TF1 SavedModel with tags [] whose
  `default` and `image_feature_vector` signatures map `images` to
  `default`, plus the tfhub_module.pb marker file."""
  import tensorflow as tf
  graph = tf.Graph()
  with graph.as_default():
    images = tf.compat.v1.placeholder(tf.float32, [None, size, size, 3],
                                      name='images')
    weights = tf.compat.v1.Variable(_tiny_weights(), name='weights')
    features = _tiny_features(images, weights)
    signature = tf.compat.v1.saved_model.build_signature_def(
        inputs={'images': tf.compat.v1.saved_model.build_tensor_info(images)},
        outputs={'default':
                 tf.compat.v1.saved_model.build_tensor_info(features)})
    with tf.compat.v1.Session() as session:
      session.run(tf.compat.v1.global_variables_initializer())
      builder = tf.compat.v1.saved_model.Builder(str(path))
      builder.add_meta_graph_and_variables(
          session, [], signature_def_map={
              'default': signature, 'image_feature_vector': signature})
      builder.save()
  # ModuleDef { format: FORMAT_V3 }: hub only checks the file exists.
  with open(os.path.join(path, 'tfhub_module.pb'), 'wb') as f:
    f.write(b'\x08\x03')
  return str(path)


def encode(array, fmt='JPEG', **options):
  buffer = io.BytesIO()
  Image.fromarray(array).save(buffer, fmt, **options)
  return buffer.getvalue()


def solid_image(colour, seed, size=24):
  """A noisy solid-colour RGB image as uint8."""
  rng = np.random.default_rng(seed)
  noise = rng.integers(-20, 21, size=[size, size, 3])
  return np.clip(np.array(colour) + noise, 0, 255).astype(np.uint8)


def make_image_dir(root, per_class=20, colours=None, fmt='JPEG',
                   extension='jpg'):
  """Class folders of noisy solid-colour photos; returns the folder path."""
  colours = colours or CLASS_COLOURS
  for index, (name, colour) in enumerate(sorted(colours.items())):
    folder = os.path.join(root, name)
    os.makedirs(folder, exist_ok=True)
    for i in range(per_class):
      with open(os.path.join(folder, f'{name}_{i:03d}.{extension}'),
                'wb') as f:
        f.write(encode(solid_image(colour, seed=index * 1000 + i), fmt))
  return str(root)


# Processes started, by the test that started them: the suite's cost is
# mostly TensorFlow start-ups, so the summary names how many tests pay one.
# With workers (pytest-xdist) each counts its own and the summary adds them.
_processes_by_test = collections.Counter()
_current_test = None
_popen_init = subprocess.Popen.__init__
_fork = os.fork
OUTSIDE_ANY_TEST = ''
# The longest chain of steps that must run in order, the README's: started
# first, so the other workers take the rest of the suite meanwhile. The docs
# pages go on from where it left off, each on its own, so they come last and
# any worker takes any of them.
RUN_FIRST = 'tests/test_readme.py::test_readme_commands'
RUN_LAST_APART = 'tests/test_readme.py::test_docs_page_commands'


def _counted_popen_init(self, *args, **kwargs):
  _processes_by_test[_current_test or OUTSIDE_ANY_TEST] += 1
  _popen_init(self, *args, **kwargs)


def _counted_fork():
  pid = _fork()
  if pid:
    _processes_by_test[_current_test or OUTSIDE_ANY_TEST] += 1
  return pid


def _is_worker_controller(config):
  return (not hasattr(config, 'workerinput') and
          getattr(config.option, 'numprocesses', None))


def _share_the_cores(config):
  """Each xdist worker gets its share of the cores for TensorFlow's thread
  pools, in the worker and in the processes its tests start (the variables
  are inherited). With one worker per core and TensorFlow's default of a
  thread per core in each, two workers' pools would spin against each other
  on the same cores."""
  workers = getattr(config, 'workerinput', {}).get('workercount')
  if workers:
    threads = str(max(1, (os.cpu_count() or 1) // workers))
    for name in ('TF_NUM_INTRAOP_THREADS', 'TF_NUM_INTEROP_THREADS'):
      os.environ.setdefault(name, threads)


def pytest_configure(config):
  _share_the_cores(config)
  # The controller of workers starts them and runs no test: nothing to count.
  if not _is_worker_controller(config):
    subprocess.Popen.__init__ = _counted_popen_init
    os.fork = _counted_fork


def pytest_collection_modifyitems(items):
  items.sort(key=lambda item: (not item.nodeid.startswith(RUN_FIRST),
                               item.nodeid.startswith(RUN_LAST_APART)))


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
  if config.getoption('dist') != 'loadscope':
    return None
  from xdist import scheduler

  class ModulesTogetherDocsPagesApart(scheduler.LoadScopeScheduling):

    def _split_scope(self, nodeid):
      if nodeid.startswith(RUN_LAST_APART):
        return nodeid
      return super()._split_scope(nodeid)

    def _reschedule(self, node):
      # A docs page is long: a worker gets one only when it holds a single
      # test (a worker starts a test once it has the next, so it always
      # holds one), and the last pages go to whichever worker frees up
      # first instead of queueing two deep behind another page.
      if (self.workqueue and
          next(iter(self.workqueue)).startswith(RUN_LAST_APART) and
          self._pending_of(self.assigned_work[node]) > 1):
        return
      super()._reschedule(node)

  return ModulesTogetherDocsPagesApart(config, log)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item):
  global _current_test
  _current_test = item.nodeid
  yield
  _current_test = None


def _printable(text):
  """`text` with any undecodable byte of a file name (a lone surrogate) as
  its escape, so a worker can send it to the controller as UTF-8."""
  return text.encode('utf-8', 'backslashreplace').decode('utf-8')


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item):
  outcome = yield
  if hasattr(item.config, 'workerinput'):
    report = outcome.get_result()
    report.sections = [(title, _printable(content))
                       for title, content in report.sections]
    if report.longrepr and _printable(str(report.longrepr)) != str(
        report.longrepr):
      report.longrepr = _printable(str(report.longrepr))


def pytest_sessionfinish(session):
  if hasattr(session.config, 'workerinput'):
    session.config.workeroutput['processes_by_test'] = dict(
        _processes_by_test)


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node):
  _processes_by_test.update(node.workeroutput.get('processes_by_test', {}))


def pytest_terminal_summary(terminalreporter):
  tests = [name for name in _processes_by_test if name != OUTSIDE_ANY_TEST]
  terminalreporter.write_line(
      f'{len(tests)} tests started '
      f'{sum(_processes_by_test[name] for name in tests)} '
      f'processes, {_processes_by_test[OUTSIDE_ANY_TEST]} started outside '
      'any test (POETS_LIST_PROCESSES=1 lists them)')
  if os.environ.get('POETS_LIST_PROCESSES'):
    for name, count in _processes_by_test.most_common():
      terminalreporter.write_line(f'  {count:3d}  {name or "(outside)"}')


@pytest.fixture(autouse=True)
def info_logging():
  """INFO lines on for every test: tests that parse flags in-process reset
  absl's --verbosity flag, and with it the log level, to WARNING."""
  logging.set_verbosity(logging.INFO)


class _CtrlCAfter(std_logging.Handler):

  def __init__(self, text):
    super().__init__()
    self.text = text

  def emit(self, record):
    if self.text in record.getMessage():
      raise KeyboardInterrupt  # What Python's SIGINT handler raises.


@contextlib.contextmanager
def ctrl_c_when_logged(text):
  """Ctrl-C as a user presses it: as soon as a log line holding `text` is
  written (the line is not shown), wherever the code then is."""
  handler = _CtrlCAfter(text)
  std_logging.getLogger().addHandler(handler)
  try:
    yield
  finally:
    std_logging.getLogger().removeHandler(handler)


@pytest.fixture(scope='session')
def tf2_module(tmp_path_factory):
  return make_tf2_module(tmp_path_factory.mktemp('modules') / 'tiny_tf2')


@pytest.fixture(scope='session')
def tf1_hub_module(tmp_path_factory):
  return make_tf1_hub_module(tmp_path_factory.mktemp('modules') / 'tiny_tf1')


@pytest.fixture(scope='session')
def lite0_dir(tmp_path_factory):
  """The default network, built once (seconds) into a model_dir of its own
  for the tests that only read it; building it is tested on its own."""
  from poets.core.networks import efficientnet_lite
  model_dir = tmp_path_factory.mktemp('models')
  return efficientnet_lite.ensure_module('efficientnet_lite0', str(model_dir))


@pytest.fixture
def image_dir(tmp_path):
  return make_image_dir(tmp_path / 'photos')


@pytest.fixture(scope='session')
def retrained(tmp_path_factory, tf2_module):
  """One whole retrain.py run on three colour classes, shared by tests.

  Returns (config, RunResult); every output lies in a temporary folder.
  """
  from poets import pipeline
  from poets import settings
  root = tmp_path_factory.mktemp('retrained')
  config = settings.RetrainSettings(
      image_dir=make_image_dir(root / 'photos', per_class=30),
      output_graph=str(root / 'retrained_graph.pb'),
      output_labels=str(root / 'retrained_labels.txt'),
      bottleneck_dir=str(root / 'bottlenecks'),
      intermediate_output_graphs_dir=str(root / 'intermediate'),
      intermediate_store_frequency=100,
      saved_model_dir=str(root / 'saved_model'),
      tfhub_module=tf2_module,
      model_dir=str(root / 'models'),
      how_many_training_steps=300, eval_step_interval=50,
      summaries_dir=str(root / 'summaries'),
      checkpoint_path=str(root / 'checkpoint' / 'retrain'),
      print_misclassified_test_images=True, random_seed=0)
  return config, pipeline.run(config)


@pytest.fixture
def http_server(tmp_path):
  """Serves tmp_path/served on 127.0.0.1 for the test's duration."""
  served = tmp_path / 'served'
  served.mkdir()
  handler = functools.partial(http.server.SimpleHTTPRequestHandler,
                              directory=str(served))
  server = http.server.ThreadingHTTPServer(('127.0.0.1', 0), handler)
  thread = threading.Thread(target=server.serve_forever, daemon=True)
  thread.start()
  yield served, f'http://127.0.0.1:{server.server_address[1]}'
  server.shutdown()


@pytest.fixture
def small_disk(tmp_path):
  """A folder on a 256 kB file system of its own (a tmpfs mount), to fill;
  skipped where this machine cannot mount one (not root, no tmpfs)."""
  folder = tmp_path / 'small_disk'
  folder.mkdir()
  mounted = subprocess.run(['mount', '-t', 'tmpfs', '-o', 'size=256k',
                            'tmpfs', str(folder)], capture_output=True)
  if mounted.returncode:
    pytest.skip('cannot mount a small tmpfs here')
  try:
    yield folder
  finally:
    subprocess.run(['umount', '-l', str(folder)], check=False)


def fill(folder, leave=0):
  """Fills `folder`'s file system, leaving about `leave` bytes free."""
  free = os.statvfs(folder).f_bavail * os.statvfs(folder).f_frsize - leave
  with open(os.path.join(folder, 'filler'), 'wb') as f:
    f.write(b'\0' * max(free, 0))
