"""The README and the docs are executed: their bash blocks run as a user
would type them.

In one copy of the repository's files (what a fresh clone holds), offline,
the README first and then each page of docs/, each in its own order, so that
one step's outputs feed the next as they would for a reader who did the
README's codelab first. Training steps are cut to a few; everything else runs
as written. A documented step that fails fails its page's test.
"""

import importlib.util
import os
import re
import shutil
import subprocess
import sys

import pytest

from poets import startup

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
STEPS_FLAG = re.compile(r'--how_many_training_steps[= ](\d+)')
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


def with_few_steps(command):
  """`command` without its comment, its training cut to at most FEW_STEPS
  steps."""
  command = without_comment(command)
  if not any(script in command for script in CUT_SCRIPTS):
    return command
  if STEPS_FLAG.search(command):
    return STEPS_FLAG.sub(lambda steps: '--how_many_training_steps '
                          f'{min(int(steps[1]), FEW_STEPS)}', command)
  return f'{command} --how_many_training_steps {FEW_STEPS}'


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
              '--sweep how_many_training_steps=5,9\n```\n')
  commands = readme_commands(markdown)
  assert commands == [
      'python retrain.py   # retrain',
      'python retrain.py --how_many_training_steps 500      --output_graph '
      'g.pb',
      'python label_image.py --image a.jpg',
      'python experiments.py --sweep learning_rate=0.1,1',
      'python experiments.py --how_many_training_steps=10 '
      '--sweep how_many_training_steps=5,9']
  assert [with_few_steps(c) for c in commands] == [
      f'python retrain.py --how_many_training_steps {FEW_STEPS}',
      f'python retrain.py --how_many_training_steps {FEW_STEPS}      '
      '--output_graph g.pb',
      'python label_image.py --image a.jpg',
      'python experiments.py --sweep learning_rate=0.1,1 '
      f'--how_many_training_steps {FEW_STEPS}',
      'python experiments.py --how_many_training_steps 10 '
      '--sweep how_many_training_steps=5,9']


def documented_pages():
  """README.md, then docs/*.md: the pages whose commands a reader runs."""
  docs = os.path.join(ROOT, 'docs')
  return ['README.md'] + sorted(
      f'docs/{name}' for name in os.listdir(docs) if name.endswith('.md'))


def read_page(page):
  with open(os.path.join(ROOT, page), encoding='utf-8') as f:
    return f.read()


def is_left_out(command):
  if command.startswith(tuple(NOT_RUN)):
    return True
  if any(runner in command for runner in CLUSTER_RUNNERS):
    return True
  return any(script in command and importlib.util.find_spec(package) is None
             for script, package in NEEDS_PACKAGE.items())


class FreshCopy:
  """One copy of the checkout, in which each page's commands run once."""

  def __init__(self, repo):
    self.repo = repo
    self.ran = {}  # Page -> the commands it ran, as typed.
    # Commands that already succeeded here: a page that repeats one (a
    # docs page quoting the README's) has it checked already.
    self.succeeded = set()
    self.failed = {}  # Page -> the first line of why.
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

  def run_page(self, page):
    """Runs `page`'s commands, once, and returns those it ran."""
    if page in self.failed:
      pytest.fail(f'{page} failed earlier on this copy: {self.failed[page]}')
    if page not in self.ran:
      try:
        self.ran[page] = self._run_commands(page)
      except AssertionError as error:
        self.failed[page] = str(error).splitlines()[0]
        raise
    return self.ran[page]

  def _run_commands(self, page):
    ran = []
    for command in readme_commands(read_page(page)):
      if is_left_out(command):
        continue
      if with_few_steps(command) in self.succeeded:
        ran.append(without_comment(command))
        continue
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
      self.succeeded.add(with_few_steps(command))
      ran.append(without_comment(command))
    return ran


@pytest.fixture(scope='module')
def fresh_copy(tmp_path_factory):
  repo = copy_of_checkout(tmp_path_factory.mktemp('clone') / 'repo')
  if repo is None:
    pytest.skip('not a git checkout: cannot tell which files a clone holds')
  return FreshCopy(repo)


@pytest.mark.slow
@pytest.mark.parametrize('page', documented_pages())
def test_page_commands_run_on_a_fresh_copy_offline(fresh_copy, page):
  # Pages go on from where the README's codelab leaves a reader.
  readme_ran = fresh_copy.run_page('README.md')
  ran = fresh_copy.run_page(page)
  if page == 'README.md':
    # The run command of "Install, test, run", and the codelab's retrain and
    # label_image steps.
    assert 'python retrain.py' in ran
    assert any(c.startswith('python label_image.py') for c in ran)
    assert os.path.exists(os.path.join(fresh_copy.repo, 'tf_files',
                                       'retrained_graph.pb'))
  assert readme_ran


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
