"""Tests for poets/files.py: atomic writes and directory swaps."""

import os

import pytest

from poets import files
from poets.errors import PoetsError


def test_atomic_write_never_leaves_a_half_file(tmp_path, monkeypatch):
  target = tmp_path / 'out.txt'
  target.write_text('old and good')

  class Boom(Exception):
    pass

  def failing_replace(source, destination):
    raise Boom

  monkeypatch.setattr(os, 'replace', failing_replace)
  with pytest.raises(Boom):
    files.atomic_write(str(target), 'new')
  assert target.read_text() == 'old and good'
  assert os.listdir(tmp_path) == ['out.txt']


def test_replace_directory_swaps_whole_folders(tmp_path):
  (tmp_path / 'out').mkdir()
  (tmp_path / 'out' / 'old.txt').write_text('old')
  built = files.temporary_sibling(str(tmp_path / 'out'))
  with open(os.path.join(built, 'new.txt'), 'w') as f:
    f.write('new')
  files.replace_directory(built, str(tmp_path / 'out'))
  assert os.listdir(tmp_path / 'out') == ['new.txt']
  assert os.listdir(tmp_path) == ['out']


def test_unwritable_folder_names_the_flag(tmp_path):
  blocker = tmp_path / 'file'
  blocker.write_text('a file where a folder should be')
  with pytest.raises(PoetsError, match='Cannot write to .*--bottleneck_dir'):
    files.check_writable(str(blocker / 'sub'), '--bottleneck_dir')


def test_written_files_get_the_usual_permissions(tmp_path):
  files.atomic_write(str(tmp_path / 'labels.txt'), 'a\n')
  mask = os.umask(0)
  os.umask(mask)
  assert (tmp_path / 'labels.txt').stat().st_mode & 0o777 == 0o666 & ~mask
