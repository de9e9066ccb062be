"""Bad input, interruptions and faults: keep working, lose nothing, say why.

Each case is a folder of photos people really collect: phone pictures,
downloads, screenshots, with the odd broken or mislabelled file among them.
"""

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

from conftest import CLASS_COLOURS, encode, make_image_dir, solid_image
from poets import bottlenecks
from poets import images
from poets import modules
from poets import pipeline
from poets import settings
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
  # 60 good + 11 odd-but-fine images, 3 skipped; 'notes' is no class.
  assert result.labels == ['blue', 'green', 'red', 'yellow']
  assert result.cache.created == 72
  assert 'Using 72 images' in caplog.text
  assert 'skipped 3 that could not be decoded' in caplog.text
  assert 'No files found' in caplog.text
  assert 'No validation images for' in caplog.text  # 'yellow' has one image.
  assert result.training.test.accuracy >= 0.8


@pytest.mark.slow
def test_script_exits_zero_when_training_happened(tmp_path, tf2_module):
  make_image_dir(tmp_path / 'photos', per_class=10)
  (tmp_path / 'photos' / 'red' / 'broken.jpg').write_bytes(b'\xff\xd8junk')
  process = subprocess.run(
      [sys.executable, os.path.join(ROOT, 'retrain.py'), '--image_dir',
       'photos', '--tfhub_module', tf2_module, '--how_many_training_steps',
       '20'], cwd=tmp_path, capture_output=True, text=True, timeout=300)
  assert process.returncode == 0, process.stderr
  assert 'Skipping photos/red/broken.jpg' in process.stderr
  assert 'Traceback' not in process.stderr


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


def test_rerun_keeps_earlier_summaries(tmp_path, tf2_module, caplog):
  make_image_dir(tmp_path / 'photos', per_class=10)
  config = _config(tmp_path, tmp_path / 'photos', tf2_module)
  pipeline.run(config)
  first = sorted(os.listdir(tmp_path / 'summaries' / 'train'))
  pipeline.run(config)
  previous = tmp_path / 'summaries' / pipeline.EARLIER_RUNS
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
def test_ctrl_c_during_training_saves_and_says_so(tmp_path, tf2_module):
  make_image_dir(tmp_path / 'photos', per_class=10)
  process = subprocess.Popen(
      [sys.executable, os.path.join(ROOT, 'retrain.py'), '--image_dir',
       'photos', '--tfhub_module', tf2_module, '--how_many_training_steps',
       '100000000', '--eval_step_interval', '1000'],
      cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
      text=True)
  lines = []
  for line in process.stdout:
    lines.append(line)
    if 'Step 1000: Validation accuracy' in line:
      process.send_signal(signal.SIGINT)
      break
  output = ''.join(lines) + process.stdout.read()
  assert process.wait(timeout=120) == 130
  assert 'Traceback' not in output
  assert 'Interrupted at step' in output
  assert 'Stopped early at step' in output and 'retrained_graph.pb' in output
  assert (tmp_path / 'tf_files' / 'retrained_graph.pb').stat().st_size > 0


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
  lists = images.create_image_lists(str(root / 'photos'), 0, 0)
  splits, summary = bottlenecks.cache_bottlenecks(
      lists, loaded_tiny_module, str(root / 'bottlenecks'))
  used = set(splits['training'].filenames)
  failed = {path for path, _ in summary.failed}
  for i in range(len(blobs)):
    path = str(root / 'photos' / 'red' / f'fuzz_{i}.jpg')
    assert (path in used) != (path in failed)
