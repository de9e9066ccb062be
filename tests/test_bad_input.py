"""Bad input, interruptions and faults: keep working, lose nothing, say why.

Each case is a folder of photos people really collect: phone pictures,
downloads, screenshots, with the odd broken or mislabelled file among them.
"""

import glob
import io
import os
import signal
import subprocess
import sys
import tarfile
import time

import hypothesis
from hypothesis import HealthCheck, given, strategies as st
import numpy as np
from PIL import Image
import pytest
import tensorflow as tf

from conftest import (CLASS_COLOURS, ODD_FILE_NAMES, ctrl_c_when_logged,
                      encode, make_image_dir, solid_image)
from poets import pipeline
from poets import summaries
from poets import settings
from poets.core import bottlenecks
from poets.core import image_listing
from poets.core import modules
from poets.errors import PoetsError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _config(tmp_path, image_dir, module, **changes):
  return settings.RetrainSettings(
      image_dir=str(image_dir), output_graph=str(tmp_path / 'out' / 'g.pb'),
      output_labels=str(tmp_path / 'out' / 'labels.txt'),
      bottleneck_dir=str(tmp_path / 'bottlenecks'), tfhub_module=module,
      model_dir=str(tmp_path / 'models'),
      how_many_training_steps=100, eval_step_interval=50,
      summaries_dir=str(tmp_path / 'summaries'),
      checkpoint_path=str(tmp_path / 'checkpoint' / 'x'), random_seed=0,
      **changes)


def _messy_folder(root):
  """Good colour photos plus every kind of file users drop in by accident.

  Returns the paths that cannot be decoded (and so must be skipped).
  """
  make_image_dir(root, per_class=20)
  red, green, blue = root / 'red', root / 'green', root / 'blue'
  jpeg = encode(solid_image(CLASS_COLOURS['red'], 99, size=40), 'JPEG')
  undecodable = {
      red / 'truncated.jpg': jpeg[:len(jpeg) // 2],
      red / 'zero.jpg': b'',
      red / 'random.jpg': np.random.default_rng(0).bytes(3000),
  }
  for path, data in undecodable.items():
    path.write_bytes(data)
  pixels = solid_image(CLASS_COLOURS['green'], 98, size=30)
  (green / 'png_named.jpg').write_bytes(encode(pixels, 'PNG'))
  (green / 'jpeg_named.png').write_bytes(encode(pixels, 'JPEG'))
  Image.fromarray(pixels).convert('CMYK').save(green / 'cmyk.jpg', 'JPEG')
  (green / 'gray.jpg').write_bytes(encode(pixels[:, :, 1], 'JPEG'))
  (blue / 'rgba.png').write_bytes(encode(
      np.dstack([solid_image(CLASS_COLOURS['blue'], 97, 30),
                 np.full([30, 30], 128, np.uint8)]), 'PNG'))
  frames = [Image.fromarray(solid_image(CLASS_COLOURS['blue'], s, 30))
            for s in (1, 2)]
  buffer = io.BytesIO()
  frames[0].save(buffer, 'GIF', save_all=True, append_images=frames[1:])
  (blue / 'animated.gif').write_bytes(buffer.getvalue())
  (blue / 'tiny.png').write_bytes(encode(np.full([1, 1, 3], [30, 40, 220],
                                                 np.uint8), 'PNG'))
  big = Image.new('RGB', (8000, 6000), CLASS_COLOURS['blue'])
  big.save(blue / 'huge.jpg', 'JPEG', quality=50)
  (blue / 'blå blomst 1.jpg').write_bytes(encode(
      solid_image(CLASS_COLOURS['blue'], 96), 'JPEG'))
  os.symlink(blue / 'blue_000.jpg', blue / 'linked.jpg')
  (blue / '.DS_Store').write_bytes(b'\0\0\0\1Bud1')
  (blue / 'nested' / 'deeper').mkdir(parents=True)
  (blue / 'nested' / 'deeper' / 'inside.jpg').write_bytes(encode(
      solid_image(CLASS_COLOURS['blue'], 95), 'JPEG'))
  (root / 'notes').mkdir()
  (root / 'notes' / 'readme.txt').write_text('not a photo')
  (root / 'yellow').mkdir()
  (root / 'yellow' / 'only.jpg').write_bytes(encode(
      solid_image((230, 220, 30), 94), 'JPEG'))
  return sorted(str(p) for p in undecodable)


def test_messy_folder_trains_and_skips_only_what_cannot_be_decoded(
    tmp_path, tf2_module, caplog):
  undecodable = _messy_folder(tmp_path / 'photos')
  result = pipeline.run(_config(tmp_path, tmp_path / 'photos', tf2_module))
  assert sorted(path for path, _ in result.cache.failed) == undecodable
  for path in undecodable:
    assert caplog.text.count(f'Skipping {path}') == 1
  # 60 good + 10 odd-but-fine images, 3 skipped; 'notes' is no class;
  # linked.jpg is blue_000.jpg again, used once.
  assert result.labels == ['blue', 'green', 'red', 'yellow']
  assert result.cache.created == 71
  assert 'Using 71 images' in caplog.text
  assert 'skipped 3 that could not be decoded' in caplog.text
  assert 'No files found' in caplog.text
  assert 'No validation images for' in caplog.text  # 'yellow' has one image.
  assert result.training.test.accuracy >= 0.8


def test_fewer_than_two_usable_classes_stops_with_one_line(tmp_path,
                                                           tf2_module):
  make_image_dir(tmp_path / 'photos', colours={'red': (200, 0, 0)})
  (tmp_path / 'photos' / 'broken').mkdir()
  (tmp_path / 'photos' / 'broken' / 'a.jpg').write_bytes(b'nope')
  with pytest.raises(PoetsError, match='Fewer than 2 classes have usable'):
    pipeline.run(_config(tmp_path, tmp_path / 'photos', tf2_module))


def test_unwritable_output_folder_stops_before_any_work(tmp_path, tf2_module):
  make_image_dir(tmp_path / 'photos', per_class=3)
  (tmp_path / 'out').write_text('a file where the output folder should be')
  with pytest.raises(PoetsError, match='Cannot write to .*--output_graph'):
    pipeline.run(_config(tmp_path, tmp_path / 'photos', tf2_module))
  assert not (tmp_path / 'bottlenecks').exists()


def _make(path, what):
  """Puts something a user might have at `path` before the run."""
  path.parent.mkdir(parents=True, exist_ok=True)
  if what == 'folder':
    path.mkdir()
  elif what == 'file':
    path.write_text('precious')
  else:  # Somebody else's SavedModel, with their notes beside it.
    path.mkdir()
    (path / 'saved_model.pb').write_text('theirs')
    (path / 'notes.txt').write_text('precious')


@pytest.mark.parametrize('change, what, flag, message', [
    ({'output_graph': 'out/g.pb'}, 'folder', '--output_graph', 'is a folder'),
    ({'output_labels': 'out/labels.txt'}, 'folder', '--output_labels',
     'is a folder'),
    ({'checkpoint_path': 'checkpoint/x'}, 'folder', '--checkpoint_path',
     'is a folder'),
    ({'summaries_dir': 'summaries'}, 'file', '--summaries_dir',
     'Cannot write to'),
    ({'intermediate_output_graphs_dir': 'inter',
      'intermediate_store_frequency': 10}, 'file',
     '--intermediate_output_graphs_dir', 'Cannot write to'),
    ({'saved_model_dir': 'sm'}, 'file', '--saved_model_dir', 'is a file'),
    ({'saved_model_dir': 'sm'}, 'foreign', '--saved_model_dir',
     'did not write'),
])
def test_output_problems_stop_before_any_work(tmp_path, tf2_module, change,
                                              what, flag, message):
  make_image_dir(tmp_path / 'photos', per_class=3)
  config = _config(tmp_path, tmp_path / 'photos', tf2_module)
  changes = {key: str(tmp_path / value) if isinstance(value, str) else value
             for key, value in change.items()}
  config = config.replace(**changes)
  path = tmp_path / next(iter(change.values()))
  _make(path, what)
  before = sorted(os.listdir(tmp_path))
  with pytest.raises(PoetsError, match=f'{message}.*{flag}|{flag}.*{message}'):
    pipeline.run(config)
  assert sorted(os.listdir(tmp_path)) == before  # No work, nothing moved.
  if what == 'file':
    assert path.read_text() == 'precious'
  if what == 'foreign':
    assert (path / 'notes.txt').read_text() == 'precious'


def _contents(path):
  """Every file under `path` (or the file itself) by relative name."""
  if os.path.isfile(path):
    with open(path, 'rb') as f:
      return f.read()
  found = {}
  for root, _, names in os.walk(path):
    for name in names:
      with open(os.path.join(root, name), 'rb') as f:
        found[os.path.relpath(os.path.join(root, name), path)] = f.read()
  return found


def test_an_interrupted_run_never_replaces_a_finished_graph(
    tmp_path, tf2_module, caplog):
  make_image_dir(tmp_path / 'photos', per_class=10)
  config = _config(tmp_path, tmp_path / 'photos', tf2_module,
                   saved_model_dir=str(tmp_path / 'out' / 'sm'))
  finished = [config.output_graph, config.output_labels,
              config.saved_model_dir, config.checkpoint_path +
              '.index']
  beside = [str(tmp_path / 'out' / 'g.interrupted.pb'),
            str(tmp_path / 'out' / 'labels.interrupted.txt'),
            str(tmp_path / 'out' / 'sm.interrupted'),
            str(tmp_path / 'checkpoint' / 'x.interrupted.index')]
  with ctrl_c_when_logged('Step 0: Train accuracy'):
    first = pipeline.run(config)
  # Even with no finished graph yet, an interrupted one goes beside.
  assert first.training.interrupted
  assert [os.path.exists(path) for path in finished + beside] == [
      False] * 4 + [True] * 4
  assert f'the layer trained so far to {beside[0]}' in caplog.text

  pipeline.run(config)
  good = {path: _contents(path) for path in finished}
  caplog.clear()
  with ctrl_c_when_logged('Step 0: Train accuracy'):
    pipeline.run(config)
  assert {path: _contents(path) for path in finished} == good
  assert all(os.path.exists(path) for path in beside)
  assert f'the layer trained so far to {beside[0]}' in caplog.text


def test_any_name_the_file_system_allows_trains(tmp_path, tf2_module):
  root = tmp_path / 'photos'
  make_image_dir(root, per_class=10)
  odd_class = root / os.fsdecode(b'bl\xe5 %s -\n')
  odd_class.mkdir()
  for i, name in enumerate(ODD_FILE_NAMES):
    for folder, colour in ((root / 'red', 'red'), (odd_class, 'blue')):
      (folder / name).write_bytes(encode(solid_image(CLASS_COLOURS[colour],
                                                     500 + i)))
  out = tmp_path / os.fsdecode(b'out \xff\n')
  # TensorFlow's own writers need UTF-8 paths (see the next test).
  tf_out = tmp_path / 'out 🌸 %s\n'
  config = _config(tmp_path, root, tf2_module).replace(
      output_graph=str(out / ('g' * 252 + '.pb')),
      output_labels=str(out / ('l' * 251 + '.txt')),
      saved_model_dir=str(tf_out / ('s' * 242)),
      intermediate_output_graphs_dir=str(out / 'intermediate'),
      intermediate_store_frequency=50, print_misclassified_test_images=True,
      summaries_dir=str(tf_out / 'summaries'),
      checkpoint_path=str(tf_out / ('c' * 200)))
  result = pipeline.run(config)
  assert result.cache.failed == []
  assert result.cache.created == 30 + 2 * len(ODD_FILE_NAMES)
  assert (out / ('g' * 252 + '.pb')).stat().st_size > 0
  assert (tf_out / ('s' * 242) / 'saved_model.pb').exists()
  again = pipeline.run(config)  # Every odd name found in the cache.
  assert again.cache.reused == result.cache.created


def test_a_file_where_an_event_folder_goes_is_refused(tmp_path, tf2_module):
  make_image_dir(tmp_path / 'photos', per_class=3)
  (tmp_path / 'summaries').mkdir()
  (tmp_path / 'summaries' / 'train').write_text('precious')
  with pytest.raises(PoetsError, match='train is a file.*--summaries_dir'):
    pipeline.run(_config(tmp_path, tmp_path / 'photos', tf2_module))
  assert sorted(os.listdir(tmp_path)) == ['photos', 'summaries']


def test_two_outputs_at_one_path_are_refused(tmp_path, tf2_module):
  # The labels would silently replace the graph.
  make_image_dir(tmp_path / 'photos', per_class=3)
  config = _config(tmp_path, tmp_path / 'photos', tf2_module).replace(
      output_labels=str(tmp_path / 'out' / '..' / 'out' / 'g.pb'))
  with pytest.raises(PoetsError, match='--output_labels .* is also the path '
                     'of --output_graph'):
    pipeline.run(config)
  assert os.listdir(tmp_path) == ['photos']


def test_tensorflow_outputs_need_utf8_paths(tmp_path, tf2_module):
  make_image_dir(tmp_path / 'photos', per_class=3)
  config = _config(tmp_path, tmp_path / 'photos', tf2_module).replace(
      checkpoint_path=str(tmp_path / os.fsdecode(b'\xff') / 'x'))
  with pytest.raises(PoetsError, match='--checkpoint_path.*not valid UTF-8'):
    pipeline.run(config)
  assert os.listdir(tmp_path) == ['photos']


def test_rerun_keeps_earlier_summaries(tmp_path, tf2_module, caplog):
  make_image_dir(tmp_path / 'photos', per_class=10)
  config = _config(tmp_path, tmp_path / 'photos', tf2_module)
  pipeline.run(config)
  first = sorted(os.listdir(tmp_path / 'summaries' / 'train'))
  pipeline.run(config)
  previous = tmp_path / 'summaries' / summaries.EARLIER_RUNS
  (stamp,) = os.listdir(previous)
  assert sorted(os.listdir(previous / stamp / 'train')) == first
  assert 'nothing was deleted' in caplog.text


def _wait_for(predicate, timeout=120):
  deadline = time.time() + timeout
  while time.time() < deadline:
    if predicate():
      return True
    time.sleep(0.01)
  return False


def _bottleneck_files(directory):
  return [os.path.join(root, name) for root, _, names in os.walk(directory)
          for name in names if name.endswith('.txt') and
          not name.startswith('.')]


@pytest.mark.slow
def test_sigkill_while_making_bottlenecks_then_resume(tmp_path, tf2_module):
  make_image_dir(tmp_path / 'photos', per_class=700)
  command = [sys.executable, os.path.join(ROOT, 'retrain.py'), '--image_dir',
             'photos', '--tfhub_module', tf2_module,
             '--how_many_training_steps', '10']
  process = subprocess.Popen(command, cwd=tmp_path, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
  cache = tmp_path / 'tf_files' / 'bottlenecks'
  assert _wait_for(lambda: len(_bottleneck_files(cache)) >= 100)
  process.send_signal(signal.SIGKILL)
  process.wait()
  made = _bottleneck_files(cache)
  assert 100 <= len(made) < 2100, 'killed too late to test anything'
  for path in made:  # Every file there is whole.
    values, problem = bottlenecks.read_bottleneck(path)
    assert problem is None and values.size == 8
  rerun = subprocess.run(command, cwd=tmp_path, capture_output=True,
                         text=True, timeout=300)
  assert rerun.returncode == 0, rerun.stderr
  assert f'({len(made)} already cached)' in rerun.stderr
  assert len(_bottleneck_files(cache)) == 2100


@pytest.mark.slow
@pytest.mark.parametrize('stop, code', [(signal.SIGINT, 130),
                                        (signal.SIGTERM, 143)])
def test_ctrl_c_or_sigterm_during_training_saves_and_says_so(
    tmp_path, tf2_module, stop, code):
  # SIGTERM is what timeout, docker stop and job schedulers send.
  make_image_dir(tmp_path / 'photos', per_class=10)
  process = subprocess.Popen(
      [sys.executable, os.path.join(ROOT, 'retrain.py'), '--image_dir',
       'photos', '--tfhub_module', tf2_module, '--how_many_training_steps',
       '100000000', '--eval_step_interval', '10'],
      cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
      text=True)
  lines = []
  for line in process.stdout:
    lines.append(line)
    if 'Step 10: Validation accuracy' in line:
      process.send_signal(stop)
      break
  output = ''.join(lines) + process.stdout.read()
  assert process.wait(timeout=120) == code
  assert 'Traceback' not in output
  assert 'Interrupted at step' in output
  assert 'Stopped early at step' in output
  assert 'retrained_graph.interrupted.pb' in output
  assert (tmp_path / 'tf_files' /
          'retrained_graph.interrupted.pb').stat().st_size > 0
  assert not (tmp_path / 'tf_files' / 'retrained_graph.pb').exists()


def _event_steps(path):
  """The steps of the accuracy scalars in one event file, in file order."""
  return [event.step for event in tf.compat.v1.train.summary_iterator(path)
          for value in event.summary.value if value.tag.endswith('accuracy')]


@pytest.mark.slow
def test_two_runs_at_once_into_the_same_folders(tmp_path, tf2_module,
                                                monkeypatch):
  make_image_dir(tmp_path / 'photos', per_class=10)
  # The second run sees two of the classes, through links: the same photos,
  # the same cache files, a layer of another shape.
  (tmp_path / 'two').mkdir()
  for name in ('green', 'red'):
    os.symlink(tmp_path / 'photos' / name, tmp_path / 'two' / name)
  shared = ['--tfhub_module', tf2_module, '--how_many_training_steps', '3000',
            '--eval_step_interval', '100', '--summaries_dir', 'summaries']

  def start(image_dir, *more):
    return subprocess.Popen(
        [sys.executable, os.path.join(ROOT, 'retrain.py'), '--image_dir',
         image_dir, *shared, *more], cwd=tmp_path,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

  # A finished run before them, whose summaries they find.
  monkeypatch.chdir(tmp_path)
  pipeline.run(settings.RetrainSettings(
      image_dir='photos', tfhub_module=tf2_module, how_many_training_steps=10,
      eval_step_interval=100, summaries_dir='summaries'))
  runs = [start('photos'),
          start('two', '--output_graph', 'tf_files/two.pb', '--output_labels',
                'tf_files/two.txt')]
  outputs = [run.communicate(timeout=300)[0] for run in runs]
  for run, output in zip(runs, outputs):
    assert run.returncode == 0, output
    assert 'Traceback' not in output
  # However the two overlap, nothing is lost: each run's event files are
  # whole and its own, in summaries/ or (if one run had already finished
  # when the other started) set aside under ~previous_runs/.
  for split in ('train', 'validation'):
    paths = glob.glob(str(tmp_path / 'summaries' / '**' / split / 'events.*'),
                      recursive=True)
    steps = sorted(_event_steps(path) for path in paths)
    full = list(range(0, 3000, 100)) + [2999]
    assert steps == sorted([[0, 9], full, full])
  cache = _bottleneck_files(tmp_path / 'tf_files' / 'bottlenecks')
  assert len(cache) == 30
  assert all(bottlenecks.read_bottleneck(path)[1] is None for path in cache)
  assert not [name for _, _, names in os.walk(tmp_path / 'tf_files')
              for name in names if name.endswith('.tmp')]
  with open(tmp_path / 'tf_files' / 'two.txt') as f:
    assert f.read() == 'green\nred\n'


def _archive(entries):
  buffer = io.BytesIO()
  with tarfile.open(fileobj=buffer, mode='w:gz') as archive:
    for name, data in entries:
      info = tarfile.TarInfo(name)
      info.size = len(data)
      archive.addfile(info, io.BytesIO(data))
  return buffer.getvalue()


@pytest.mark.parametrize('member', ['../escape.txt', '/etc/evil.txt',
                                    'ok/../../escape.txt'])
def test_module_archive_with_outside_paths_is_refused(http_server, tmp_path,
                                                      member):
  served, url = http_server
  (served / 'evil.tar.gz').write_bytes(_archive([
      ('saved_model.pb', b'x'), (member, b'gotcha')]))
  with tf.Graph().as_default(), pytest.raises(PoetsError,
                                              match='Refused the module'):
    modules.load_module(modules.ModuleSpec(f'{url}/evil.tar.gz', 'evil',
                                           str(tmp_path / 'models')))
  assert not (tmp_path / 'escape.txt').exists()
  assert not any(name.endswith('escape.txt') or name == 'evil.txt'
                 for _, _, names in os.walk(tmp_path) for name in names)


@pytest.fixture(scope='module')
def loaded_tiny_module(tf2_module):
  with tf.Graph().as_default():
    return modules.load_module(modules.ModuleSpec(tf2_module, 'tiny'))


@hypothesis.settings(max_examples=12, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(blobs=st.lists(st.binary(max_size=2000), min_size=1, max_size=6))
def test_arbitrary_bytes_become_a_bottleneck_or_a_logged_skip(
    blobs, loaded_tiny_module, tmp_path_factory):
  root = tmp_path_factory.mktemp('fuzz')
  make_image_dir(root / 'photos', per_class=1)
  for i, blob in enumerate(blobs):
    (root / 'photos' / 'red' / f'fuzz_{i}.jpg').write_bytes(blob)
  lists = image_listing.create_image_lists(str(root / 'photos'), 0, 0)
  splits, summary = bottlenecks.cache_bottlenecks(
      lists, loaded_tiny_module, str(root / 'bottlenecks'))
  used = set(splits['training'].filenames)
  failed = {path for path, _ in summary.failed}
  for i in range(len(blobs)):
    path = str(root / 'photos' / 'red' / f'fuzz_{i}.jpg')
    assert (path in used) != (path in failed)
