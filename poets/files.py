"""Writing files so that a crash never leaves half of one behind, and
unpacking archives so that none writes outside its folder.

Every cache file and output is written under a temporary name in the same
folder and renamed into place; a rename is atomic, so readers see the old
file or the new one, never a partial one.
"""

import os
import shutil
import tarfile
import tempfile

from poets.errors import PoetsError


def _umask():
  mask = os.umask(0)
  os.umask(mask)
  return mask


def atomic_write(path, data):
  """Writes `data` (str or bytes) to `path` via a temporary file and rename."""
  directory = os.path.dirname(path) or '.'
  os.makedirs(directory, exist_ok=True)
  fd, temp_path = tempfile.mkstemp(dir=directory,
                                   prefix=f'.{os.path.basename(path)}.',
                                   suffix='.tmp')
  try:
    with os.fdopen(fd, 'wb' if isinstance(data, bytes) else 'w') as f:
      f.write(data)
    # mkstemp makes owner-only files; give the permissions open() would.
    os.chmod(temp_path, 0o666 & ~_umask())
    os.replace(temp_path, path)
  except BaseException:
    os.unlink(temp_path)
    raise


def temporary_sibling(path):
  """A new empty folder beside `path` to build a directory output in."""
  parent = os.path.dirname(os.path.abspath(path))
  os.makedirs(parent, exist_ok=True)
  return tempfile.mkdtemp(dir=parent, prefix=f'.{os.path.basename(path)}.',
                          suffix='.tmp')


def replace_directory(built, path):
  """Moves the finished folder `built` to `path`, replacing an older one.

  The old folder is renamed aside first and removed only once the new one is
  in place, so a failure in between leaves one complete folder at `path`.
  """
  if not os.path.exists(path):
    os.rename(built, path)
    return
  old = temporary_sibling(path)
  os.rmdir(old)
  os.rename(path, old)
  os.rename(built, path)
  shutil.rmtree(old)


def check_writable(directory, flag):
  """Fails early, naming the flag to change, if `directory` is not writable.

  Better to learn this before an hour of bottlenecks than after.
  """
  directory = directory or '.'
  try:
    os.makedirs(directory, exist_ok=True)
    with tempfile.TemporaryFile(dir=directory):
      pass
  except OSError as e:
    raise PoetsError(f'Cannot write to {directory} ({e.strerror}); choose '
                     f'another {flag}.') from e


def extract_checked(handle, fileobj, destination):
  """Unpacks a module archive, refusing any member that would land outside.

  TF Hub's own extractor refuses `..` but quietly strips a leading `/`; an
  archive naming absolute paths is not a module anyone should trust.
  """
  with tarfile.open(mode='r|*', fileobj=fileobj) as archive:
    for member in archive:
      name = member.name
      if (os.path.isabs(name) or name.startswith(('/', '\\')) or
          os.path.normpath(name).split(os.sep)[0] == '..'):
        raise PoetsError(f'Refused the module archive {handle}: it holds '
                         f"'{name}', a path outside the module folder.")
      if not (member.isfile() or member.isdir()):
        raise PoetsError(f'Refused the module archive {handle}: '
                         f"'{name}' is a link or device, not a file.")
      archive.extract(member, destination, filter='data')
