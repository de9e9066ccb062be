"""Writing files so that a crash never leaves half of one behind, and
unpacking archives so that none writes outside its folder.

Every cache file and output is written under a temporary name in the same
folder and renamed into place; a rename is atomic, so readers see the old
file or the new one, never a partial one.
"""

import contextlib
import dataclasses
import errno
import fnmatch
import hashlib
import os
import shutil
import stat
import tarfile
import tempfile
import time
import urllib.request

from absl import logging

from poets.errors import PoetsError

# The longest file name, in bytes, on Linux and macOS file systems.
NAME_MAX = 255
# What mkstemp/mkdtemp add to a prefix: 8 random letters and '.tmp'.
_TEMPORARY_PART = 12


def fitted_name(name, limit=NAME_MAX):
  """`name`, or if it is longer than `limit` bytes a shorter one unique to it.

  Names made from a user's (a photo's cache file, a temporary name beside an
  output) can pass the limit although the user's name did not. The shortened
  name keeps the start and adds a hash of the whole, so it stays stable and
  distinct.
  """
  encoded = os.fsencode(name)
  if len(encoded) <= limit:
    return name
  digest = hashlib.sha1(encoded).hexdigest()[:16]
  return os.fsdecode(encoded[:limit - len(digest) - 1]) + '~' + digest


def _temporary_prefix(path):
  """A hidden prefix naming `path`, short enough for a temporary name."""
  name = fitted_name(os.path.basename(path),
                     NAME_MAX - _TEMPORARY_PART - len('..'))
  return f'.{name}.'


def interrupted_path(path):
  """Where an interrupted run's output goes: beside the finished one.

  'retrained_graph.pb' -> 'retrained_graph.interrupted.pb', a folder 'sm' ->
  'sm.interrupted', so a run stopped early never replaces a finished result.
  """
  directory, name = os.path.split(path.rstrip(os.sep))
  stem, extension = os.path.splitext(name)
  return os.path.join(directory, fitted_name(
      f'{stem}.interrupted', NAME_MAX - len(os.fsencode(extension))) +
                      extension)


def _umask():
  mask = os.umask(0)
  os.umask(mask)
  return mask


@contextlib.contextmanager
def atomic_file(path, mode='wb'):
  """A file to write that appears at `path`, whole, only when the block ends.

  It is written under a temporary name in the same folder and renamed; if the
  block fails, the temporary file is removed and `path` is left as it was.
  """
  with _temporary_file(path, mode) as (f, temp_path):
    yield f
  try:
    os.replace(temp_path, path)
  except BaseException:
    os.unlink(temp_path)
    raise


@contextlib.contextmanager
def _temporary_file(path, mode):
  """A new hidden file beside `path`, open to write; removed if the block
  fails, else closed with the permissions open() would have given."""
  directory = os.path.dirname(path) or '.'
  os.makedirs(directory, exist_ok=True)
  fd, temp_path = tempfile.mkstemp(dir=directory,
                                   prefix=_temporary_prefix(path),
                                   suffix='.tmp')
  try:
    with os.fdopen(fd, mode) as f:
      yield f, temp_path
    # mkstemp makes owner-only files; give the permissions open() would.
    os.chmod(temp_path, 0o666 & ~_umask())
  except OSError as e:
    os.unlink(temp_path)
    if e.filename is None and e.errno:  # A write names no file: name it.
      raise OSError(e.errno, e.strerror, path) from e
    raise
  except BaseException:
    os.unlink(temp_path)
    raise


def staged_write(path, data):
  """Writes `data` to a new hidden file beside `path`; returns its name, for
  the caller to rename to `path` together with other outputs (or remove)."""
  with _temporary_file(path, 'wb' if isinstance(data, bytes) else 'w') as (
      f, temp_path):
    f.write(data)
  return temp_path


def atomic_write(path, data):
  """Writes `data` (str or bytes) to `path` via a temporary file and rename."""
  with atomic_file(path, 'wb' if isinstance(data, bytes) else 'w') as f:
    f.write(data)


def temporary_sibling(path):
  """A new empty folder beside `path` to build a directory output in."""
  parent = os.path.dirname(os.path.abspath(path))
  os.makedirs(parent, exist_ok=True)
  return tempfile.mkdtemp(dir=parent, prefix=_temporary_prefix(path),
                          suffix='.tmp')


# The ownership rule: a folder this project may move, replace or delete
# holds this file, whose lines after the first name (as fnmatch patterns,
# relative to the folder) everything the project writes there. A folder
# without it, or holding anything it does not name, belongs to the user.
OWNER_MARKER = 'written_by_retrain.txt'


def mark_ours(folder, patterns, what):
  """Writes the OWNER_MARKER of `folder`, which `what` (a script) wrote and
  which may hold only what `patterns` name."""
  atomic_write(os.path.join(folder, OWNER_MARKER), ''.join(
      f'{line}\n' for line in [
          f'{what} wrote this folder and may replace, move or delete it; it '
          'will not touch a folder holding anything else. What it holds:'] +
      list(patterns)))


def files_under(folder):
  """Every file below `folder`, as paths relative to it."""
  return sorted(os.path.relpath(os.path.join(root, name), folder)
                for root, _, names in os.walk(folder) for name in names)


def strangers(folder, unmarked_patterns=()):
  """What in `folder` this project did not write: the files its marker does
  not name, or without a marker every file unless all match
  `unmarked_patterns` (what earlier versions wrote without a marker)."""
  present = files_under(folder)
  marker = os.path.join(folder, OWNER_MARKER)
  if os.path.isfile(marker):
    with open(marker, errors='surrogateescape') as f:
      patterns = f.read().splitlines()[1:] + [OWNER_MARKER]
  else:
    entries = os.listdir(folder)
    if any(os.path.isdir(os.path.join(folder, e)) for e in entries):
      return sorted(entries)  # Earlier versions wrote no sub-folders.
    patterns = list(unmarked_patterns)
  return [name for name in present
          if not any(fnmatch.fnmatchcase(name, p) for p in patterns)]


def check_ours(folder, flag, fix, what='retrain.py', unmarked_patterns=()):
  """Refuses, in one line naming `flag` and `fix`, to move or replace the
  existing `folder` unless `what` wrote it (see OWNER_MARKER)."""
  if not os.path.lexists(folder):
    return
  if os.path.islink(folder) or not os.path.isdir(folder):
    raise PoetsError(f'{flag} {folder} is a file or a link, not a folder '
                     f'{what} wrote; {fix}.')
  found = strangers(folder, unmarked_patterns)
  if found:
    more = f' and {len(found) - 1} more' if len(found) > 1 else ''
    raise PoetsError(f'{flag} {os.path.normpath(folder)} holds files {what} '
                     f'did not write ({found[0]}{more}); {fix}.')


def replace_directory(built, path):
  """Moves the finished folder `built` to `path`, replacing an older one.

  The old folder is renamed aside first and removed only once the new one is
  in place, so a failure in between leaves one complete folder at `path`.
  Callers check with `check_ours` that an existing `path` is theirs.
  """
  if not os.path.exists(path):
    os.rename(built, path)
    return
  old = temporary_sibling(path)
  os.rmdir(old)
  os.rename(path, old)
  os.rename(built, path)
  shutil.rmtree(old)


def _nearest_existing(path):
  path = os.path.abspath(path)
  while not os.path.exists(path):
    path = os.path.dirname(path)
  return path


def mebibytes(size):
  """'61,440 MiB': a file size as messages give it."""
  return f'{size / 2**20:,.0f} MiB'


def read_regular_file(path, flag, limit, fix):
  """The bytes of `path`, refused in one line naming `flag` and `fix` unless
  it is a regular file of at most `limit` bytes.

  Opened without blocking and checked on the open file: a pipe or a device
  (/dev/zero) is never read, so it can neither hang nor fill memory.
  """
  try:
    fd = os.open(path, os.O_RDONLY | getattr(os, 'O_NONBLOCK', 0))
  except OSError as e:
    raise PoetsError(f'Cannot read {flag} {path} ({e.strerror}); {fix}.'
                     ) from e
  with os.fdopen(fd, 'rb') as f:
    status = os.fstat(fd)
    if not stat.S_ISREG(status.st_mode):
      raise PoetsError(f'{flag} {path} is not a regular file (a pipe, a '
                       f'device or a socket); {fix}.')
    if status.st_size > limit:
      raise PoetsError(f'{flag} {path} is {mebibytes(status.st_size)}, more '
                       f'than the {mebibytes(limit)} such a file can be; '
                       f'{fix}.')
    try:
      data = f.read(limit + 1)
    except OSError as e:
      raise PoetsError(f'Cannot read {flag} {path} ({e.strerror}); {fix}.'
                       ) from e
  if len(data) > limit:  # It grew while we read.
    raise PoetsError(f'{flag} {path} grew past {mebibytes(limit)} while it '
                     f'was read; {fix}.')
  return data


# What the machine, not the program, got wrong: a full disk, a denied
# permission, a read-only mount.
ENVIRONMENT_ERRNOS = {errno.ENOSPC: 'free some space there',
                      errno.EDQUOT: 'free some space there',
                      errno.EACCES: 'give yourself write access there',
                      errno.EPERM: 'give yourself write access there',
                      errno.EROFS: 'the file system is read-only'}


def environment_error(error):
  """One line for an error of the machine's (ENVIRONMENT_ERRNOS), naming
  the path and what to do, or None for any other error. `error` is an
  OSError, or a TensorFlow error whose message carries the system's words
  (its writers report a full disk so)."""
  if isinstance(error, OSError):
    if error.errno not in ENVIRONMENT_ERRNOS:
      return None
    path = error.filename or 'a file'
    return (f'Cannot write {path} ({error.strerror}); '
            f'{ENVIRONMENT_ERRNOS[error.errno]}, or choose another folder.')
  message = str(getattr(error, 'message', error))
  for number, fix in ENVIRONMENT_ERRNOS.items():
    words = os.strerror(number)
    for line in message.splitlines():
      if words in line:  # TensorFlow's: '<path>; <words>' among others.
        path = line.strip().split(f'; {words}')[0].strip()
        return (f'Cannot write {path} ({words}); {fix}, or choose another '
                'folder.')
  return None


@contextlib.contextmanager
def only_a_warning(what, errors):
  """Runs the block; an error of the machine's among `errors` (see
  environment_error) becomes the warning "Could not <what>: <line>", for
  what a run writes beside its outputs and can go on without. Any other
  error is raised."""
  try:
    yield
  except errors as e:
    line = environment_error(e)
    if line is None:
      raise
    logging.warning('Could not %s: %s', what, line)


def check_writable(directory, flag):
  """Fails early, naming the flag to change, if `directory` cannot be made
  or written to. Creates nothing.

  Better to learn this before an hour of bottlenecks than after.
  """
  directory = directory or '.'
  existing = _nearest_existing(directory)
  if not os.path.isdir(existing):
    raise PoetsError(f'Cannot write to {directory}: {existing} is a file, not '
                     f'a folder; choose another {flag}.')
  try:
    with tempfile.TemporaryFile(dir=existing):
      pass
  except OSError as e:
    raise PoetsError(f'Cannot write to {directory} ({e.strerror}); choose '
                     f'another {flag}.') from e


def check_output_file(path, flag):
  """Fails early, naming the flag, if the file `path` could not be written:
  a folder is in its place, its name is too long, or its folder cannot be
  written."""
  if os.path.isdir(path):
    raise PoetsError(f'{flag} {path} is a folder; pass the path of a file to '
                     'write.')
  name = os.path.basename(path)
  if len(os.fsencode(name)) > NAME_MAX:
    raise PoetsError(f'{flag}: the file name {name[:40]}... is too long '
                     f'({len(os.fsencode(name))} bytes; file systems allow '
                     f'{NAME_MAX}); choose a shorter one.')
  check_writable(os.path.dirname(path), flag)


def check_tensorflow_path(path, flag):
  """Fails early if TensorFlow could not write to `path`.

  Its writers (checkpoints, event files, SavedModels) take paths as UTF-8
  text, so a folder name with other bytes, which Python and the file system
  handle, would fail only after training.
  """
  try:
    os.path.abspath(path).encode('utf-8')
  except UnicodeEncodeError as e:
    raise PoetsError(f'{flag} {path}: TensorFlow cannot write to a path that '
                     f'is not valid UTF-8; choose another {flag}.') from e


def extract_checked(handle, fileobj, destination):
  """Unpacks a module archive, refusing any member that would land outside.

  TF Hub's own extractor refuses `..` but quietly strips a leading `/`; an
  archive naming absolute paths is not a module anyone should trust.
  """
  unpacked = 0
  with tarfile.open(mode='r|*', fileobj=fileobj) as archive:
    for member in archive:
      name = member.name
      unpacked += member.size  # Known from its header, before any write.
      if unpacked > UNPACKED_BYTES:
        raise PoetsError(f'Refused the archive {handle}: it unpacks to more '
                         f'than {UNPACKED_BYTES / 2**30:g} GiB (at '
                         f"'{name}').")
      if (os.path.isabs(name) or name.startswith(('/', '\\')) or
          os.path.normpath(name).split(os.sep)[0] == '..'):
        raise PoetsError(f'Refused the module archive {handle}: it holds '
                         f"'{name}', a path outside the module folder.")
      if not (member.isfile() or member.isdir()):
        raise PoetsError(f'Refused the module archive {handle}: '
                         f"'{name}' is a link or device, not a file.")
      archive.extract(member, destination, filter='data')


# A download ends within this time and size whatever the server does (a
# trickle of one byte a minute, an endless stream); the largest archive the
# project fetches, Inception v3's, is 85 MB.
DOWNLOAD_SECONDS = 15 * 60
DOWNLOAD_BYTES = 2 * 2**30
# What is unpacked from one archive, in all.
UNPACKED_BYTES = 2 * 2**30
GZIP_MAGIC = b'\x1f\x8b'
_CHUNK = 2**20


@dataclasses.dataclass(frozen=True)
class DownloadLimits:
  """How long (seconds, in all) and how large (bytes) a download may be."""
  seconds: float = DOWNLOAD_SECONDS
  max_bytes: int = DOWNLOAD_BYTES


class DownloadError(OSError):
  """A download that failed, took too long, grew too large or is not what
  was asked for; its message says which."""


def download(url, path, starts_with=GZIP_MAGIC, seconds=DOWNLOAD_SECONDS,
             limit=DOWNLOAD_BYTES):
  """Streams `url` into a temporary file beside `path` and renames it into
  place, only if it arrived whole within `seconds` and `limit` bytes and
  starts with `starts_with` (a login page served instead of a .tgz does
  not); else removes it and raises DownloadError."""
  deadline = time.monotonic() + seconds
  with atomic_file(path) as f:
    # read1 returns what one receive brings (each waits at most the socket
    # timeout), so the deadline is checked however slowly bytes trickle.
    with urllib.request.urlopen(url, timeout=min(30, seconds)) as response:
      size = 0
      while True:
        if time.monotonic() > deadline:
          raise DownloadError(f'it took longer than {seconds:g} s')
        chunk = response.read1(_CHUNK)
        if not chunk:
          break
        if size == 0 and not chunk.startswith(starts_with):
          page = chunk.lstrip()[:1] == b'<'  # A login or error page.
          raise DownloadError('the server sent a web page, not the archive'
                              if page else 'what the server sent is not '
                              'the archive')
        size += len(chunk)
        if size > limit:
          raise DownloadError(f'it is larger than {limit / 2**20:,.0f} MiB')
        f.write(chunk)
    if size == 0:
      raise DownloadError('the server sent nothing')
