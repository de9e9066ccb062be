"""Fine-tuning: the embedded EfficientNet-Lite cut in two, its top trainable.

`--fine_tune_blocks N` trains the network's top N MBConv blocks, its final
1x1 convolution (the head) and the new layer together. Freezing everything
below a cut is what makes the cut cacheable: the frozen bottom (the stem and
the blocks below the cut) runs once per image, its output is cached
(poets/core/cut_cache.py), and each training step runs only the trainable
top from the cached cut.

Graphs here are TF1 graphs, as the rest of training. The bottom is built
from constants (it never changes) under `frozen_blocks`; the top from
variables under `fine_tuned_blocks`, initialised with the pretrained
values, so the Graphs tab shows the two side by side and the Histograms tab
each trained kernel. Batch normalisation is folded into the
convolutions, as in the embedded module: fine-tuning a folded kernel and
bias is fine-tuning with batch norm in inference mode (frozen statistics,
trainable scale and shift), the safe choice with batches of a few dozen
photos of one folder, whose statistics are not ImageNet's.
"""

import dataclasses
import math

import tensorflow as tf

from poets.core import feeds
from poets.core import graph_names
from poets.core import modules
from poets.core.networks import architectures
from poets.core.networks import efficientnet_lite
from poets.errors import PoetsError

@dataclasses.dataclass(frozen=True)
class Cut:
  """The embedded network split before block `block`, which is the first
  that trains."""
  module_name: str  # 'efficientnet_lite0'
  network: object  # efficientnet_lite's folded NumPy network
  image_size: int
  block: int

  @property
  def shape(self):
    """The cut's activation for one image: [height, width, channels]."""
    size = math.ceil(self.image_size / self.network.stem.stride)
    for block in self.network.blocks[:self.block]:
      size = math.ceil(size / block.depthwise.stride)
    return (size, size,
            self.network.blocks[self.block - 1].project.kernel.shape[-1])

  @property
  def name(self):
    """Names the cache folder: other networks and cuts never share it."""
    return f'{self.module_name}_cut{self.block}'


def find_cut(architecture, tfhub_module, fine_tune_blocks):
  """The Cut for `--fine_tune_blocks` on `--architecture`, or PoetsError.

  Only the embedded EfficientNet-Lite networks have weights we can train:
  the codelab's MobileNet and Inception graphs hold theirs as constants of a
  frozen graph, and a TF Hub module's layers are not reachable one by one.
  """
  supported = ', '.join(architectures.EFFICIENTNET_LITE)
  if tfhub_module:
    raise PoetsError(
        f'--fine_tune_blocks {fine_tune_blocks} cannot train the layers of a '
        f'--tfhub_module; use one of the embedded networks ({supported}) or '
        '--fine_tune_blocks 0.')
  name = (architecture or architectures.DEFAULT_ARCHITECTURE).lower()
  if name not in architectures.EFFICIENTNET_LITE:
    raise PoetsError(
        f'--fine_tune_blocks {fine_tune_blocks} needs one of the embedded '
        f'networks ({supported}); {architecture} is a frozen graph that can '
        'only retrain its last layer: pass --fine_tune_blocks 0.')
  variant = efficientnet_lite.get_variant(name)
  network = efficientnet_lite.read_network(variant)
  count = len(network.blocks)
  if fine_tune_blocks > count:
    raise PoetsError(f'--fine_tune_blocks {fine_tune_blocks}: {name} has '
                     f'{count} blocks; pass at most {count}.')
  return Cut(name, network, variant.image_size, count - fine_tune_blocks)


def _apply_block(x, block, make):
  """One MBConv block; `make(name, array)` turns its weights into tensors."""

  def conv(x, folded, relu6, name):
    with tf.name_scope(name):
      return efficientnet_lite.apply_conv(
          x, folded, make('kernel', folded.kernel), make('bias', folded.bias),
          relu6)

  y = conv(x, block.expand, True, 'expand') if block.expand else x
  y = conv(conv(y, block.depthwise, True, 'depthwise'), block.project, False,
           'project')
  return x + y if block.residual else y


def _constant(name, value):
  return tf.constant(value, name=name)


def bottom(cut, images):
  """The frozen bottom: images [N, S, S, 3] in [0, 1] -> the cut."""
  network = cut.network
  with tf.name_scope(graph_names.FROZEN_SCOPE):
    x = efficientnet_lite.normalize(images)
    with tf.name_scope('stem'):
      x = efficientnet_lite.apply_conv(
          x, network.stem, _constant('kernel', network.stem.kernel),
          _constant('bias', network.stem.bias), True)
    for index in range(cut.block):
      with tf.name_scope(f'block{index}'):
        x = _apply_block(x, network.blocks[index], _constant)
  return x


def _trained_variable(name, value):
  return tf.compat.v1.Variable(value, name=name)


def top(cut, cut_values):
  """The trainable top: the cut [N, h, w, c] -> features [N, 1280]."""
  network = cut.network
  with tf.name_scope(graph_names.FINE_TUNED_SCOPE):
    x = cut_values
    for index in range(cut.block, len(network.blocks)):
      with tf.name_scope(f'block{index}'):
        x = _apply_block(x, network.blocks[index], _trained_variable)
    with tf.name_scope('head'):
      x = efficientnet_lite.apply_conv(
          x, network.head, _trained_variable('kernel', network.head.kernel),
          _trained_variable('bias', network.head.bias), True)
    return tf.reduce_mean(x, axis=[1, 2], name='pool')


def cut_input(cut, default):
  """The top's input as a placeholder with `default`, so evaluation feeds
  cached cuts to the same graph that trains on sampled ones."""
  with tf.name_scope(graph_names.INPUT_SCOPE):
    return tf.compat.v1.placeholder_with_default(
        default, [None, *cut.shape], name=graph_names.CUT_INPUT)


def top_variables_of(graph):
  return graph.get_collection(tf.compat.v1.GraphKeys.TRAINABLE_VARIABLES,
                              scope=graph_names.FINE_TUNED_SCOPE)


def bottom_module(cut, info):
  """The bottom as a module: what bottlenecks.compute and distorted
  training batches load and apply, with the module's own decoding."""
  return modules.LoadedModule(
      spec=info.spec, image_size=info.image_size, bottleneck_size=None,
      decode=info.decode, apply=lambda images: bottom(cut, images))


@dataclasses.dataclass
class FineTuning:
  """What training needs to fine-tune the top after the new layer trained
  alone: the cut, the bottom to run distorted images through, the layer's
  values to start from, and the steps and learning rate of the top."""
  cut: Cut
  bottom: modules.LoadedModule
  start: dict  # variable name -> value, TrainingResult.layer
  first_step: int
  steps: int
  learning_rate: float


def top_features(cut, cuts, layer=None):
  """The features (float32 [N, 1280]) of each array of cuts [N, h, w, c] in
  the list `cuts`, through the top: the pretrained one, or with the values
  `layer` (TrainingResult.layer) holds for it, the fine-tuned one."""
  graph = tf.Graph()
  with graph.as_default():
    cut_values = tf.compat.v1.placeholder(tf.float32, [None, *cut.shape])
    features = top(cut, cut_values)
    init = tf.compat.v1.global_variables_initializer()
  result = []
  with tf.compat.v1.Session(graph=graph) as session:
    session.run(init)
    with graph.as_default():  # Variable.load needs it.
      for variable in top_variables_of(graph):
        if layer and variable.op.name in layer:
          variable.load(layer[variable.op.name], session)
    for values in cuts:
      out = feeds.feedable_empty([len(values), features.shape[-1]])
      for start in range(0, len(values), graph_names.BATCH_SIZE):
        end = start + graph_names.BATCH_SIZE
        out[start:end] = session.run(features,
                                     {cut_values: values[start:end]})
      result.append(out)
  return result


def is_fine_tuned(layer):
  """Whether `layer` (TrainingResult.layer) holds trained top values: not
  where the run stopped before fine-tuning began."""
  return any(name.startswith(graph_names.FINE_TUNED_SCOPE + '/')
             for name in layer)


def pretrained_bottlenecks(cut, splits):
  """Each split's bottlenecks: its cuts through the pretrained top, the
  features the new layer first trains on alone."""
  features = top_features(cut, [split.bottlenecks
                                for split in splits.values()])
  return {name: dataclasses.replace(split, bottlenecks=values)
          for (name, split), values in zip(splits.items(), features)}


def network(cut, images):
  """The whole network, bottom and top: images -> features."""
  return top(cut, bottom(cut, images))
