"""The README and the docs are executed: their bash blocks run as a user
would type them.

In a copy of the repository's files (what a fresh clone holds), offline,
the README's commands in order, so that one step's outputs feed the next;
then each page of docs/ in its own copy of where the README left off, as a
reader who did the README's codelab first would run it. Training steps are
cut to a few; everything else runs as written. A documented step that fails
fails its page's test.
"""

import csv
import fcntl
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys

from PIL import Image
import pytest

from poets import startup
from poets.extras import experiment_plan
from poets.extras import experiment_reports

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Commands this test does not run, by how they start, and why.
NOT_RUN = {
    'python -m pip install': 'installs packages; CI runs this very line first',
    'python -m pytest': 'the test suite this test is part of',
    'curl ': 'needs network; the shipped photos stand in for the download',
    'tensorboard ': 'a server; the TensorBoard tests cover it',
    'tflite_convert ': "TensorFlow's own converter in the original codelab's "
                       'words, quoted to compare; tflite_convert.py is ours',
}
# Commands that need an optional package run where it is installed (CI
# installs requirements-beam.txt) and are left out elsewhere.
NEEDS_PACKAGE = {'beam_bottlenecks.py': 'apache_beam'}
# What users do not have: no documented command may name it.
PROJECT_DATA = '../shared'
# Beam runners on clusters, which a test machine does not have.
CLUSTER_RUNNERS = ('FlinkRunner', 'SparkRunner', 'DataflowRunner')
TRAINING_SCRIPTS = ('retrain.py', 'scripts.retrain')
# Whose training is cut to FEW_STEPS steps: retrain.py, and each run of a
# sweep (a value the sweep itself sets is kept).
CUT_SCRIPTS = TRAINING_SCRIPTS + ('experiments.py', 'scripts.experiments')
FEW_STEPS = 20
# Steps of the fine-tuned blocks, cut too where a command fine-tunes.
FEW_FINE_TUNE_STEPS = 1
LAYOUT_PAGE = 'docs/layout.md'
# What a documented command that works never prints, beside TensorFlow's own
# library lines (startup.is_library_line): a traceback, LiteRT's notes.
NOISE = re.compile(r'Traceback|XNNPACK|deprecat|Using experimental converter',
                   re.IGNORECASE)


def readme_commands(markdown):
  """The commands of the ```bash blocks, in order, continuations joined."""
  commands = []
  for block in re.findall(r'^```bash\n(.*?)^```', markdown, re.M | re.S):
    for line in block.replace('\\\n', ' ').splitlines():
      line = line.strip()
      if line and not line.startswith('#'):
        commands.append(line)
  return commands


def without_comment(command):
  return re.sub(r'\s+#\s.*$', '', command)


def _capped(command, flag, most):
  """`command` with `flag`'s value at most `most`, the flag added if absent."""
  given = re.compile(flag + r'[= ](\d+)')
  if given.search(command):
    return given.sub(lambda steps: f'{flag} {min(int(steps[1]), most)}',
                     command)
  return f'{command} {flag} {most}'


def with_few_steps(command):
  """`command` without its comment, its training cut to at most FEW_STEPS
  steps (and FEW_FINE_TUNE_STEPS of fine-tuning)."""
  command = without_comment(command)
  if not any(script in command for script in CUT_SCRIPTS):
    return command
  command = _capped(command, '--how_many_training_steps', FEW_STEPS)
  if 'fine_tune_blocks' in command:
    command = _capped(command, '--fine_tune_steps',
                      FEW_FINE_TUNE_STEPS)
  return command


def copy_of_checkout(destination):
  """Copies what a clone of the working tree would hold; None if no git."""
  try:
    listed = subprocess.run(
        ['git', 'ls-files', '-z', '--cached', '--others', '--exclude-standard'],
        cwd=ROOT, capture_output=True, check=True).stdout
  except (OSError, subprocess.CalledProcessError):
    return None
  for name in sorted(set(listed.decode().split('\0')) - {''}):
    source = os.path.join(ROOT, name)
    if os.path.isfile(source):  # Not a file deleted in the working tree.
      os.makedirs(os.path.join(destination, os.path.dirname(name)),
                  exist_ok=True)
      shutil.copy2(source, os.path.join(destination, name))
  return destination


def test_commands_are_read_and_cut_as_a_user_would_type_them():
  markdown = ('Text\n```bash\n# A comment.\npython retrain.py   # retrain\n'
              'python retrain.py --how_many_training_steps 500 \\\n'
              '    --output_graph g.pb\n```\n```\npython not_bash.py\n```\n'
              '```bash\npython label_image.py --image a.jpg\n'
              'python experiments.py --sweep learning_rate=0.1,1\n'
              'python experiments.py --how_many_training_steps=10 '
              '--sweep how_many_training_steps=5,9\n'
              'python retrain.py --fine_tune_blocks 2 '
              '--fine_tune_steps=40\n'
              'python experiments.py --sweep fine_tune_blocks=0,2\n```\n')
  commands = readme_commands(markdown)
  assert commands == [
      'python retrain.py   # retrain',
      'python retrain.py --how_many_training_steps 500      --output_graph '
      'g.pb',
      'python label_image.py --image a.jpg',
      'python experiments.py --sweep learning_rate=0.1,1',
      'python experiments.py --how_many_training_steps=10 '
      '--sweep how_many_training_steps=5,9',
      'python retrain.py --fine_tune_blocks 2 --fine_tune_steps=40',
      'python experiments.py --sweep fine_tune_blocks=0,2']
  assert [with_few_steps(c) for c in commands] == [
      f'python retrain.py --how_many_training_steps {FEW_STEPS}',
      f'python retrain.py --how_many_training_steps {FEW_STEPS}      '
      '--output_graph g.pb',
      'python label_image.py --image a.jpg',
      'python experiments.py --sweep learning_rate=0.1,1 '
      f'--how_many_training_steps {FEW_STEPS}',
      'python experiments.py --how_many_training_steps 10 '
      '--sweep how_many_training_steps=5,9',
      'python retrain.py --fine_tune_blocks 2 --fine_tune_steps '
      f'{FEW_FINE_TUNE_STEPS} --how_many_training_steps {FEW_STEPS}',
      'python experiments.py --sweep fine_tune_blocks=0,2 '
      f'--how_many_training_steps {FEW_STEPS} '
      f'--fine_tune_steps {FEW_FINE_TUNE_STEPS}']


def documented_pages():
  """README.md, then docs/*.md: the pages whose commands a reader runs."""
  docs = os.path.join(ROOT, 'docs')
  return ['README.md'] + sorted(
      f'docs/{name}' for name in os.listdir(docs) if name.endswith('.md'))


def read_page(page):
  with open(os.path.join(ROOT, page), encoding='utf-8') as f:
    return f.read()


def commands_run(page):
  return [command for command in readme_commands(read_page(page))
          if not is_left_out(command)]


def is_left_out(command):
  if command.startswith(tuple(NOT_RUN)):
    return True
  if any(runner in command for runner in CLUSTER_RUNNERS):
    return True
  return any(script in command and importlib.util.find_spec(package) is None
             for script, package in NEEDS_PACKAGE.items())


class FreshCopy:
  """A copy of the checkout in which one page's commands run, once."""

  def __init__(self, repo):
    self.repo = repo
    self.env = dict(os.environ)
    self.env['PATH'] = os.pathsep.join([os.path.dirname(sys.executable),
                                        self.env.get('PATH', '')])
    # Offline: anything that tries the network fails at once. Loopback stays
    # reachable, as it is offline (Beam's workers talk gRPC over it, and gRPC
    # honours these variables).
    for proxy in ('http_proxy', 'https_proxy', 'HTTP_PROXY', 'HTTPS_PROXY'):
      self.env[proxy] = 'http://127.0.0.1:9'
    for no_proxy in ('no_proxy', 'NO_PROXY'):
      self.env[no_proxy] = 'localhost,127.0.0.1,::1'
    for name in ('TF_CPP_MIN_LOG_LEVEL', startup.SHOW_TF_LOGS):
      self.env.pop(name, None)  # As a user's shell has them.

  def run_page(self, page, already_ran=()):
    """Runs `page`'s commands; returns what each printed on stdout, by the
    command as typed. A command in `already_ran` (a docs page quoting the
    README's) is checked already."""
    printed = {}
    for command in readme_commands(read_page(page)):
      if is_left_out(command):
        continue
      typed = without_comment(command)
      printed[typed] = (None if typed in already_ran else
                        self._run(page, command))
    return printed

  def _run(self, page, command):
    done = subprocess.run(['bash', '-c', with_few_steps(command)],
                          cwd=self.repo, env=self.env, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, (
        f'{page} command failed: {command}\n{done.stderr[-3000:]}')
    assert not [line for line in done.stderr.splitlines()
                if startup.is_library_line(line)], command
    assert not NOISE.search(done.stderr), (command, done.stderr[-3000:])
    if any(script in command for script in TRAINING_SCRIPTS):
      # The real default module trained: a run that printed no accuracy
      # did not do what the page promises.
      assert re.search(r'^INFO: Final test accuracy = [\d.]+% \(N=\d+\)$',
                       done.stderr, re.M), (command, done.stderr[-3000:])
    return done.stdout


def _shared_folder(tmp_path_factory):
  """A folder every test worker of this session sees."""
  base = tmp_path_factory.getbasetemp()
  return base.parent if os.environ.get('PYTEST_XDIST_WORKER') else base


@pytest.fixture(scope='session')
def after_readme(tmp_path_factory):
  """A fresh copy after the README's commands ran in it, and what each of
  those commands printed on stdout, by the command as typed.

  The README runs once per test session, whichever worker asks first; the
  others wait for it. Each docs page then goes on from there in its own
  copy, as a reader who did the README's codelab first would, so the pages
  run side by side."""
  shared = _shared_folder(tmp_path_factory) / 'readme'
  shared.mkdir(exist_ok=True)
  outcome = shared / 'outcome.json'
  with open(shared / 'lock', 'w') as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)
    if not outcome.exists():
      repo = copy_of_checkout(shared / 'repo')
      if repo is None:
        result = {'skip': 'not a git checkout: cannot tell which files a '
                          'clone holds'}
      else:
        try:
          result = {'printed': FreshCopy(repo).run_page('README.md')}
        except AssertionError as error:
          result = {'failed': str(error)}
      outcome.write_text(json.dumps(result))
  result = json.loads(outcome.read_text())
  if 'skip' in result:
    pytest.skip(result['skip'])
  if 'failed' in result:
    pytest.fail(f'README.md failed on a fresh copy: {result["failed"]}')
  return shared / 'repo', result['printed']


@pytest.mark.slow
def test_readme_commands_run_on_a_fresh_copy_offline(after_readme):
  repo, printed = after_readme
  ran = list(printed)
  # The run command of "Install, test, run", and the codelab's retrain and
  # label_image steps.
  assert 'python retrain.py' in ran
  assert any(c.startswith('python label_image.py') for c in ran)
  assert os.path.exists(os.path.join(repo, 'tf_files', 'retrained_graph.pb'))


@pytest.mark.slow
def test_the_readmes_photo_count_sweep_leaves_its_table_runs_and_plots(
    after_readme):
  """The homework's "how many photos" answer: the table printed, a run
  folder each with its graph, curves and pictures, and the plots."""
  repo, printed = after_readme
  [table] = [stdout for command, stdout in printed.items()
             if '--sweep images_per_class=5,all ' in command]
  assert '| images_per_class | status | test accuracy |' in table
  # The runs' own log lines stay in their logs.
  assert 'Train accuracy' not in table
  experiments = repo / 'tf_files' / 'experiments'
  [name] = [n for n in os.listdir(experiments)
            if n.endswith('_images_per_class')]
  out = experiments / name
  with open(out / 'results.csv') as f:
    rows = list(csv.DictReader(f))
  assert [row['images_per_class'] for row in rows] == ['5', 'all']
  for row in rows:
    run = out / f'images_per_class={row["images_per_class"]}'
    assert row['status'] == 'ok' and repo / row['run_dir'] == run
    assert (run / 'retrained_graph.pb').stat().st_size > 0
    with Image.open(run / 'confusion_matrix.png') as picture:
      picture.verify()
    for split in ('train', 'validation'):
      assert any(n.startswith('events.out.tfevents')
                 for n in os.listdir(run / split))
    # The table's numbers are the run's own.
    log = (run / experiment_plan.LOG_NAME).read_text()
    accuracy = re.search(r'Final test accuracy = ([\d.]+)% \(N=(\d+)\)', log)
    assert f'{100 * float(row["test_accuracy"]):.1f}' == accuracy[1]
    assert row['test_images'] == accuracy[2]
    assert f'({row["training_images"]} training, ' in log
    assert row['steps'] == str(FEW_STEPS)
  few, every = rows
  # Five photos of each of the five classes, tested on the same photos.
  assert few['training_images'] == '25' != every['training_images']
  assert few['test_images'] == every['test_images'] != '0'
  # Both runs found every bottleneck in the cache the codelab's steps made.
  assert [row['bottlenecks_created'] for row in rows] == ['0', '0']
  for plot in (experiment_reports.CURVES_NAME,
               'accuracy_and_time_by_images_per_class.png'):
    with Image.open(out / plot) as image:
      image.verify()
  page = (out / 'results.md').read_text()
  assert '--sweep images_per_class=5,all' in page
  assert '](accuracy_and_time_by_images_per_class.png)' in page
  assert f']({name}/results.md)' in (experiments / 'index.md').read_text()


def processes_started(page):
  """How many Python processes `page`'s commands start, a measure of what
  running them costs: each starts TensorFlow. Beam's DirectRunner starts a
  worker process per core besides."""
  return sum(1 + (os.cpu_count() or 1) * ('beam_bottlenecks.py' in command)
             for command in commands_run(page)
             if command.startswith('python'))


@pytest.mark.slow
# The costliest pages first, so that the last to start are short and no
# worker waits long for another at the end.
@pytest.mark.parametrize('page', sorted(
    filter(commands_run, documented_pages()[1:]),
    key=lambda page: -processes_started(page)))
def test_docs_page_commands_run_on_a_fresh_copy_offline(after_readme,
                                                         tmp_path, page):
  readme_repo, readme_printed = after_readme
  repo = tmp_path / 'repo'
  shutil.copytree(readme_repo, repo, symlinks=True)
  FreshCopy(repo).run_page(page, already_ran=readme_printed)


@pytest.mark.parametrize('page', documented_pages())
def test_pages_name_nothing_a_fresh_clone_lacks(page):
  assert PROJECT_DATA not in read_page(page)


def test_the_readme_links_every_docs_page():
  readme = read_page('README.md')
  unlinked = [page for page in documented_pages()[1:]
              if f']({page})' not in readme]
  assert not unlinked


def test_project_layout_names_every_file_and_only_files_that_exist():
  """docs/layout.md's table is a reader's map: every script and package
  module has its row, and every row names something that is there."""
  table = read_page(LAYOUT_PAGE)
  listed = set(re.findall(r'^\| `([^`]+)`', table, re.MULTILINE))
  listed |= set(re.findall(r'^\| `[^`]+`, `([^`]+)`', table, re.MULTILINE))
  assert all(os.path.exists(os.path.join(ROOT, path)) for path in listed), (
      sorted(p for p in listed if not os.path.exists(os.path.join(ROOT, p))))
  files = {name for name in os.listdir(ROOT) if name.endswith('.py')}
  for folder, _, names in os.walk(os.path.join(ROOT, 'poets')):
    folder = os.path.relpath(folder, ROOT)
    files |= {
        os.path.join(folder, name)
        for name in names
        if name.endswith(('.py', '.txt'))
    }
  assert files <= listed, sorted(files - listed)
  # No two modules share a name (scripts/ holds the codelab's shims of the
  # top-level scripts, on purpose).
  names = [
      os.path.basename(path)
      for path in files
      if path.endswith('.py') and not path.endswith('__init__.py')
  ]
  assert len(names) == len(set(names)), sorted(
      name for name in names if names.count(name) > 1)
