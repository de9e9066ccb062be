"""Tests for poets/files.py: atomic writes and directory swaps."""

import http.server
import io
import os
import subprocess
import tarfile
import threading
import time

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


def test_names_of_the_longest_allowed_length_are_written(tmp_path):
  # The temporary name beside such a file must not be longer than it.
  longest = 'n' * 251 + '.txt'
  files.atomic_write(str(tmp_path / longest), 'kept')
  assert (tmp_path / longest).read_text() == 'kept'
  built = files.temporary_sibling(str(tmp_path / ('d' * 255)))
  files.replace_directory(built, str(tmp_path / ('d' * 255)))
  assert sorted(os.listdir(tmp_path)) == ['d' * 255, longest]


def test_fitted_names_stay_short_distinct_and_stable():
  long_a, long_b = 'a' * 300 + '1', 'a' * 300 + '2'
  fitted = {files.fitted_name(name, 100) for name in (long_a, long_b)}
  assert len(fitted) == 2
  assert all(len(os.fsencode(name)) <= 100 for name in fitted)
  assert files.fitted_name(long_a, 100) == files.fitted_name(long_a, 100)
  assert files.fitted_name('short.jpg', 100) == 'short.jpg'
  # Cutting through a multi-byte letter or an undecodable byte is fine.
  odd = os.fsdecode(b'\xff' + 'ø'.encode() * 200)
  assert len(os.fsencode(files.fitted_name(odd, 101))) <= 101


@pytest.mark.parametrize('make, message', [
    (lambda p: p.mkdir(), 'is a folder'),
    (lambda p: p.parent.rmdir() or p.parent.write_text('x'),
     'Cannot write to'),
])
def test_output_file_problems_name_the_flag(tmp_path, make, message):
  path = tmp_path / 'out' / 'graph.pb'
  path.parent.mkdir()
  make(path)
  with pytest.raises(PoetsError, match=f'{message}.*--output_graph|'
                     f'--output_graph.*{message}'):
    files.check_output_file(str(path), '--output_graph')


def test_too_long_an_output_name_is_refused(tmp_path):
  with pytest.raises(PoetsError, match='--output_labels.*too long'):
    files.check_output_file(str(tmp_path / ('x' * 256)), '--output_labels')


def test_interrupted_outputs_go_beside_the_finished_ones():
  assert files.interrupted_path('tf_files/retrained_graph.pb') == (
      'tf_files/retrained_graph.interrupted.pb')
  assert files.interrupted_path('tf_files/saved_model/') == (
      'tf_files/saved_model.interrupted')
  assert files.interrupted_path('ckpt') == 'ckpt.interrupted'


class _Trickle(http.server.BaseHTTPRequestHandler):
  """A server that sends a gzip header, then one byte every 0.2 s."""

  def do_GET(self):  # pylint: disable=invalid-name
    self.send_response(200)
    self.send_header('Content-Type', 'application/gzip')
    self.end_headers()
    try:
      self.wfile.write(files.GZIP_MAGIC)
      for _ in range(200):
        self.wfile.write(b'x')
        self.wfile.flush()
        time.sleep(0.2)
    except OSError:
      pass  # The client gave up, as it should.

  def log_message(self, *args):
    del args


def test_a_download_that_trickles_ends_at_its_deadline(tmp_path):
  server = http.server.ThreadingHTTPServer(('127.0.0.1', 0), _Trickle)
  threading.Thread(target=server.serve_forever, daemon=True).start()
  start = time.monotonic()
  try:
    with pytest.raises(files.DownloadError, match='took longer than 2 s'):
      files.download(f'http://127.0.0.1:{server.server_address[1]}/x.tgz',
                     str(tmp_path / 'x.tgz'), seconds=2)
  finally:
    server.shutdown()
  assert time.monotonic() - start < 10
  assert os.listdir(tmp_path) == []


def test_a_login_page_is_not_kept_as_the_archive(http_server, tmp_path):
  served, url = http_server
  (served / 'x.tgz').write_text('<html>Please log in</html>')
  with pytest.raises(files.DownloadError, match='sent a web page, not the archive'):
    files.download(f'{url}/x.tgz', str(tmp_path / 'x.tgz'))
  assert os.listdir(tmp_path) == ['served']


def test_a_download_past_its_size_cap_is_dropped(http_server, tmp_path):
  served, url = http_server
  (served / 'x.tgz').write_bytes(files.GZIP_MAGIC + b'\0' * 5000)
  with pytest.raises(files.DownloadError, match='larger than'):
    files.download(f'{url}/x.tgz', str(tmp_path / 'x.tgz'), limit=4000)
  assert os.listdir(tmp_path) == ['served']
  files.download(f'{url}/x.tgz', str(tmp_path / 'x.tgz'))
  assert (tmp_path / 'x.tgz').read_bytes() == (served / 'x.tgz').read_bytes()


def test_an_archive_member_too_large_is_refused_before_it_is_written(
    tmp_path, monkeypatch):
  buffer = io.BytesIO()
  with tarfile.open(fileobj=buffer, mode='w:gz') as archive:
    for name, size in (('small.txt', 10), ('huge.bin', 5000)):
      info = tarfile.TarInfo(name)
      info.size = size
      archive.addfile(info, io.BytesIO(b'\0' * size))
  monkeypatch.setattr(files, 'UNPACKED_BYTES', 4096)
  buffer.seek(0)
  (tmp_path / 'out').mkdir()
  with pytest.raises(PoetsError, match="unpacks to more than .* 'huge.bin'"):
    files.extract_checked('x.tgz', buffer, str(tmp_path / 'out'))
  assert not (tmp_path / 'out' / 'huge.bin').exists()


def test_imagenet_from_a_read_only_folder_is_one_line(small_disk,
                                                      monkeypatch):
  """label_image.py --imagenet run from a read-only folder: a traceback."""
  from poets import cli  # pylint: disable=import-outside-toplevel
  from poets.extras import imagenet_demo  # pylint: disable=import-outside-toplevel
  subprocess.run(['mount', '-o', 'remount,ro', str(small_disk)], check=True)
  monkeypatch.chdir(small_disk)
  with pytest.raises(OSError) as raised:
    imagenet_demo.export_imagenet_graph()
  assert cli.environment_error_line(raised.value) == (
      'Cannot write tf_files (Read-only file system); the file system is '
      'read-only, or choose another folder.')


def test_the_download_flags_reach_the_download(tmp_path, monkeypatch):
  from poets import pipeline  # pylint: disable=import-outside-toplevel
  from poets import settings  # pylint: disable=import-outside-toplevel
  asked = {}

  def download(url, path, seconds, limit, **kwargs):
    del kwargs  # Unused.
    asked.update(seconds=seconds, limit=limit)
    raise files.DownloadError('offline here')

  monkeypatch.setattr(files, 'download', download)
  with pytest.raises(PoetsError, match='offline here'):
    pipeline._resolve_module(settings.RetrainSettings(  # pylint: disable=protected-access
        architecture='inception_v3', model_dir=str(tmp_path),
        download_timeout=7, download_max_mb=3))
  assert asked == {'seconds': 7, 'limit': 3 * 2**20}
