"""Tests for poets/extras/beam_pipeline.py: retrain.py's cache, made by Beam.

The pipeline runs on Beam's DirectRunner in this process (in_memory), on
tiny photos and the tiny module; one slow test runs the script as a user
does, with worker processes, and retrain.py after it.
"""

import json
import logging
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

beam = pytest.importorskip('apache_beam')

from conftest import make_image_dir  # noqa: E402
from poets.core import bottlenecks  # noqa: E402
from poets.core import image_listing  # noqa: E402
from poets.core import modules  # noqa: E402
from poets.errors import PoetsError  # noqa: E402
from poets.extras import beam_pipeline  # noqa: E402

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
IN_PROCESS = ['--runner', 'DirectRunner', '--direct_running_mode',
              'in_memory', '--direct_num_workers', '1']


def _photos(root):
  """Three colour classes of 20 photos, and one file that is no image."""
  image_dir = make_image_dir(root / 'photos')
  broken = os.path.join(image_dir, 'green', 'broken.jpg')
  with open(broken, 'wb') as f:
    f.write(b'not a jpeg at all')
  return image_dir, broken


@pytest.fixture(scope='module')
def made(tmp_path_factory, tf2_module):
  """One Beam run on fresh photos, shared: (image_dir, broken image, cache
  folder, Summary, the log's text)."""
  root = tmp_path_factory.mktemp('beam')
  image_dir, broken = _photos(root)
  records = []
  handler = logging.Handler()
  handler.emit = records.append
  logging.getLogger('absl').addHandler(handler)
  try:
    summary = _beam(image_dir, root / 'cache', tf2_module)
  finally:
    logging.getLogger('absl').removeHandler(handler)
  return (image_dir, broken, root / 'cache', summary,
          '\n'.join(record.getMessage() for record in records))


def _spec(module_path):
  return modules.ModuleSpec(module_path, 'tiny~module')


def _beam(image_dir, bottleneck_dir, module_path):
  return beam_pipeline.run(beam_pipeline.pipeline_options(IN_PROCESS),
                           image_dir, str(bottleneck_dir), _spec(module_path))


def _retrain_cache(image_dir, bottleneck_dir, spec):
  """What retrain.py does with the cache: returns (splits, CacheSummary)."""
  import tensorflow as tf
  with tf.Graph().as_default():
    module = modules.load_module(spec)
  return bottlenecks.cache_bottlenecks(
      image_listing.create_image_lists(image_dir, 10, 10), module,
      str(bottleneck_dir))


def _cache_files(bottleneck_dir):
  return sorted(os.path.relpath(os.path.join(root, name), bottleneck_dir)
                for root, _, names in os.walk(bottleneck_dir)
                for name in names if name.endswith('_tiny~module.txt'))


def _values(path):
  with open(path) as f:
    return np.array([float(x) for x in f.read().split(',')])


def test_beam_makes_retrains_cache_and_retrain_reuses_it(made, tf2_module,
                                                         tmp_path):
  image_dir, broken, cache, summary, log = made
  assert (summary.created, summary.reused, summary.recomputed) == (60, 0, 0)
  [(path, reason)] = summary.failed
  assert path == broken and reason.startswith('Unknown image file format')
  assert f'Skipping {broken}: Unknown image file format' in log
  report = beam_pipeline.skipped_report_path(str(cache), 'tiny~module')
  with open(report) as f:
    assert [json.loads(line)[0] for line in f] == [broken]

  _, own = _retrain_cache(image_dir, tmp_path / 'own', _spec(tf2_module))
  assert own.created == 60
  names = _cache_files(cache)
  assert names == _cache_files(tmp_path / 'own') and len(names) == 60
  for name in names:
    np.testing.assert_allclose(_values(cache / name),
                               _values(tmp_path / 'own' / name),
                               rtol=1e-5, atol=1e-5)

  _, reuse = _retrain_cache(image_dir, cache, _spec(tf2_module))
  assert (reuse.created, reuse.reused, reuse.recomputed) == (0, 60, 0)


def test_rerun_makes_only_missing_and_damaged_files(made, tf2_module,
                                                    tmp_path, caplog):
  image_dir, _, first_cache, _, _ = made
  cache = tmp_path / 'cache'
  shutil.copytree(first_cache, cache)
  names = _cache_files(cache)
  # As if the first run had been killed after some files, and one damaged.
  for name in names[:25]:
    os.remove(cache / name)
  damaged = cache / names[30]
  damaged.write_text('1.0,2.0')
  kept = {name: os.stat(cache / name).st_mtime_ns for name in names[31:]}
  summary = _beam(image_dir, cache, tf2_module)
  assert (summary.created, summary.reused, summary.recomputed) == (26, 34, 1)
  assert f'Recomputing bad bottleneck file {damaged}: 2 values' in caplog.text
  assert _cache_files(cache) == names
  assert {name: os.stat(cache / name).st_mtime_ns
          for name in names[31:]} == kept  # Sound files are left alone.
  _, reuse = _retrain_cache(image_dir, cache, _spec(tf2_module))
  assert reuse.created == 0 and reuse.reused == 60


def test_another_modules_cache_is_refused_and_left_alone(tf2_module,
                                                         tmp_path):
  image_dir, _ = _photos(tmp_path)
  cache = tmp_path / 'cache'
  lists = image_listing.create_image_lists(image_dir, 10, 10)
  written = 0
  for image_class in lists.classes:
    for split in image_listing.SPLITS:
      for name in image_class.split(split):
        path = bottlenecks.bottleneck_path(str(cache), image_class.dir, name,
                                           'tiny~module')
        bottlenecks.write_bottleneck(path, [0.5, 0.25, 0.125])
        written += 1
  with pytest.raises(PoetsError, match='have 3 values but this module makes '
                     '8.*--bottleneck_dir'):
    _beam(image_dir, cache, tf2_module)
  assert all((cache / name).read_text() == '0.5,0.25,0.125'
             for name in _cache_files(cache))
  assert len(_cache_files(cache)) == written


def test_options_default_to_all_cores_and_refuse_unknown_flags():
  options = beam_pipeline.pipeline_options([]).get_all_options()
  assert options['runner'] == 'DirectRunner'
  assert options['direct_running_mode'] == 'multi_processing'
  assert options['direct_num_workers'] == 0
  chosen = beam_pipeline.pipeline_options(['--direct_num_workers',
                                           '3']).get_all_options()
  assert chosen['direct_num_workers'] == 3
  with pytest.raises(PoetsError, match='unknown flag.*--direct_num_worker'):
    beam_pipeline.pipeline_options(['--direct_num_worker', '3'])


@pytest.mark.slow
def test_script_with_worker_processes_makes_the_cache_retrain_reuses(
    tmp_path, tf2_module):
  image_dir = make_image_dir(tmp_path / 'photos', per_class=12)
  made = subprocess.run(
      [sys.executable, 'beam_bottlenecks.py', '--image_dir', image_dir,
       '--tfhub_module', tf2_module, '--bottleneck_dir',
       str(tmp_path / 'cache'), '--model_dir', str(tmp_path / 'models'),
       '--direct_num_workers', '2'],
      cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
  assert made.returncode == 0, made.stderr[-3000:]
  assert 'Bottlenecks: 36 created (0 replacing bad cache files), 0 reused, ' \
         '0 failed' in made.stderr
  # retrain.py's own caching step, with the module as the script named it,
  # finds every file it needs, and sound.
  spec = modules.resolve_module('', tf2_module, str(tmp_path / 'models'))
  _, reuse = _retrain_cache(image_dir, tmp_path / 'cache', spec)
  assert (reuse.created, reuse.reused, reuse.recomputed) == (0, 36, 0)
