"""Tests for the numpy reader of legacy torch checkpoints."""

import os
import pickle

import numpy as np
import pytest

from poets.core.networks import efficientnet_lite
from poets.core.networks.torch_weights import read_state_dict
from poets.errors import PoetsError

_HEADER = b''.join(pickle.dumps(x, protocol=2) for x in (
    0x1950a86a20f9469cfc6c, 1001,
    {'protocol_version': 1001, 'little_endian': True,
     'type_sizes': {'short': 2, 'int': 4, 'long': 4}}))


def _ops(obj):
  """The pickle opcodes that push `obj`, without PROTO and STOP."""
  return pickle.dumps(obj, protocol=2)[2:-1]


def _legacy_file(path, tensors, storages):
  """Writes a legacy torch file the way torch.save does, without torch.

  tensors: {name: (storage_key, offset, size, stride)};
  storages: {key: float32 array}.
  """
  state = b'\x80\x02ccollections\nOrderedDict\n)R('
  for name, (key, offset, size, stride) in tensors.items():
    state += (_ops(name) + b'ctorch._utils\n_rebuild_tensor_v2\n((' +
              _ops('storage') + b'ctorch\nFloatStorage\n' + _ops(key) +
              _ops('cpu') + _ops(storages[key].size) + b'NtQ' +
              _ops(offset) + _ops(size) + _ops(stride) +
              b'\x89ccollections\nOrderedDict\n)RtR')
  state += b'u.'
  with open(path, 'wb') as f:
    f.write(_HEADER + state + pickle.dumps(list(storages), protocol=2))
    for data in storages.values():
      f.write(np.int64(data.size).tobytes())
      f.write(data.astype('<f4').tobytes())
  return str(path)


@pytest.fixture(scope='module')
def lite0_state():
  variant = efficientnet_lite.get_variant('efficientnet_lite0')
  return read_state_dict(efficientnet_lite.weights_path(variant))


def test_reads_lite0_shapes(lite0_state):
  assert lite0_state['_conv_stem.weight'].shape == (32, 3, 3, 3)
  assert lite0_state['_fc.weight'].shape == (1000, 1280)
  assert lite0_state['_fc.bias'].shape == (1000,)
  assert lite0_state['_blocks.15._project_conv.weight'].shape == (
      320, 1152, 1, 1)
  assert lite0_state['_conv_stem.weight'].dtype == np.float32


def test_lite0_trainable_parameter_count(lite0_state):
  not_trained = ('running_mean', 'running_var', 'num_batches_tracked')
  assert sum(v.size for k, v in lite0_state.items()
             if not k.endswith(not_trained)) == 4_652_008


def test_honours_strides_and_offsets(tmp_path):
  storage = np.arange(10, dtype=np.float32)
  path = _legacy_file(tmp_path / 'w.pth', {
      'transposed': ('s0', 0, (2, 3), (1, 2)),
      'shifted': ('s0', 4, (3,), (2,)),
  }, {'s0': storage})
  state = read_state_dict(path)
  np.testing.assert_array_equal(state['transposed'],
                                storage[:6].reshape(3, 2).T)
  np.testing.assert_array_equal(state['shifted'], [4, 6, 8])


def test_refuses_other_globals_without_running_them(tmp_path):
  marker = tmp_path / 'pwned'
  evil = b'\x80\x02cos\nsystem\n(' + _ops(f'touch {marker}') + b'tR.'
  path = tmp_path / 'evil.pth'
  path.write_bytes(_HEADER + evil)
  with pytest.raises(PoetsError, match=r'evil\.pth.*os\.system'):
    read_state_dict(str(path))
  assert not marker.exists()


def test_refuses_truncated_data(tmp_path):
  path = _legacy_file(tmp_path / 'w.pth', {'t': ('s0', 0, (4,), (1,))},
                      {'s0': np.ones(4, np.float32)})
  os.truncate(path, os.path.getsize(path) - 3)
  with pytest.raises(PoetsError, match='truncated'):
    read_state_dict(path)


def test_refuses_truncated_pickles(tmp_path):
  variant = efficientnet_lite.get_variant('efficientnet_lite0')
  with open(efficientnet_lite.weights_path(variant), 'rb') as f:
    head = f.read(5000)
  path = tmp_path / 'head.pth'
  path.write_bytes(head)
  with pytest.raises(PoetsError, match='head.pth'):
    read_state_dict(str(path))


def test_refuses_a_file_that_is_not_a_checkpoint(tmp_path):
  path = tmp_path / 'notes.pth'
  path.write_bytes(b'PK\x03\x04 a zip-format checkpoint, say')
  with pytest.raises(PoetsError, match='notes.pth'):
    read_state_dict(str(path))
