"""The codelab's own networks: frozen MobileNet v1 and Inception v3 graphs.

`--architecture mobilenet_<width>_<size>[_quantized]` and `inception_v3` are
the networks of the codelab's scripts/retrain.py: frozen GraphDefs in
archives that it downloaded once into `--model_dir` and unpacked there. This
module finds them in the same layout (the archive, or the folder unpacked from
it), downloads an archive that is missing, and describes each network as the
original's `create_model_info` did: the tensor that takes the image, the
bottleneck tensor and its size, and the mean and standard deviation of the
pixels. Images are decoded and resized with the original's ops and the graph
is imported with `import_graph_def`, so a bottleneck file made by the
original script and one made here agree, and each run reads the other's.
"""

import http.client
import os
import shutil
import tarfile
import zlib

from absl import logging
from google.protobuf import message
import tensorflow as tf

import poets
from poets import files
from poets.core import image_decoding
from poets.core.networks import architectures
from poets.errors import PoetsError

# The original's download location; tests point it at a local server.
DOWNLOAD_ROOT = 'http://download.tensorflow.org/models/'


def url(network):
  return DOWNLOAD_ROOT + network.url_path


# The archive this project ships in tf_files/models, so the codelab's
# MobileNet runs offline on a fresh clone, whatever --model_dir says.
SHIPPED_DIR = os.path.join(os.path.dirname(os.path.dirname(
    os.path.abspath(poets.__file__))), 'tf_files', 'models')



def ensure_graph(network, model_dir, downloads=files.DownloadLimits()):
  """The path of the network's frozen graph in `model_dir`.

  Uses the unpacked graph if there, else unpacks the archive beside it, else
  downloads the archive first, as the original did. An archive that ships
  with the project is unpacked from where it ships instead of downloaded.
  """
  graph_path = os.path.join(model_dir, network.graph_file)
  if os.path.isfile(graph_path):
    return graph_path
  archive_path = os.path.join(model_dir, network.archive)
  shipped = os.path.join(SHIPPED_DIR, network.archive)
  if not os.path.isfile(archive_path) and os.path.isfile(shipped):
    logging.info('Unpacking the shipped %s into %s.', shipped, model_dir)
    archive_path = shipped
  downloaded = not os.path.isfile(archive_path)
  if downloaded:
    _download(network, archive_path, model_dir, downloads)
  try:
    _unpack(archive_path, model_dir)
  except PoetsError:
    if downloaded:  # Just downloaded and refused: nothing is kept.
      os.unlink(archive_path)
    raise
  if not os.path.isfile(graph_path):
    raise PoetsError(f'{archive_path} holds no {network.graph_file}; it is '
                     f'not the archive from {url(network)}: replace it with '
                     'that one.')
  return graph_path


def _download(network, archive_path, model_dir, downloads):
  logging.info('Downloading %s to %s (once).', url(network), archive_path)
  try:
    files.download(url(network), archive_path, seconds=downloads.seconds,
                   limit=downloads.max_bytes)
  except (OSError, http.client.HTTPException, ValueError) as e:
    reason = getattr(e, 'reason', None) or e
    raise PoetsError(
        f'{network.archive} is not in {model_dir} and could not be '
        f'downloaded ({reason}): put {network.archive} (from {url(network)}) '
        f'in {os.path.join(model_dir, "")}, or use --architecture '
        f'{architectures.SHIPPED} '
        '(shipped) or efficientnet_lite0 (built offline).') from e


def _unpack(archive_path, model_dir):
  """Unpacks into `model_dir` like the original, but checked, and through a
  temporary folder, so a killed run never leaves half a graph to be used."""
  unpacked = files.temporary_sibling(
      os.path.join(model_dir, os.path.basename(archive_path)))
  try:
    with open(archive_path, 'rb') as f:
      files.extract_checked(archive_path, f, unpacked)
    _move_missing(unpacked, model_dir)
  except (tarfile.TarError, EOFError, zlib.error) as e:
    raise PoetsError(f'{archive_path} is not a readable .tgz archive ({e}); '
                     'replace it with a good copy.') from e
  finally:
    shutil.rmtree(unpacked)


def _move_missing(source, destination):
  """Moves what `destination` lacks into it; nothing there is replaced."""
  for name in os.listdir(source):
    moved, target = os.path.join(source, name), os.path.join(destination, name)
    if not os.path.lexists(target):
      os.rename(moved, target)
    elif os.path.isdir(moved) and os.path.isdir(target):
      _move_missing(moved, target)


def read_graph(network, path):
  """The frozen GraphDef at `path`, checked to hold the network's tensors."""
  graph_def = tf.compat.v1.GraphDef()
  try:
    with open(path, 'rb') as f:
      graph_def.ParseFromString(f.read())
  except (OSError, message.DecodeError) as e:
    raise PoetsError(f'Cannot read the frozen graph {path} ({e}); replace it '
                     f'with the one in {network.archive}.') from e
  names = {node.name for node in graph_def.node}
  for tensor in (network.input_tensor, network.bottleneck_tensor):
    if tensor.split(':')[0] not in names:
      raise PoetsError(f'{path} has no tensor {tensor}, so it is not the '
                       f'graph from {network.archive}; replace it with that '
                       'one.')
  return graph_def


def decode_and_resize(network, contents):
  """File bytes -> float32 [size, size, 3] in [0, 1], by the original's ops.

  Its add_jpeg_decoding: decode, cast to float, add a batch dimension,
  `resize_bilinear` (corners not aligned, no half-pixel centres, unlike
  poets.core.image_decoding.resize). Decoding goes by content, which for a
  JPEG gives decode_jpeg's pixels and also reads PNG, GIF, BMP and WEBP.
  """
  image = tf.cast(image_decoding.decode_image(contents), tf.float32)
  resized = tf.compat.v1.image.resize_bilinear(
      tf.expand_dims(image, 0), [network.image_size, network.image_size])
  return resized[0] / 255.0


def bottlenecks(network, graph_def, batch):
  """float32 [N, size, size, 3] in [0, 1] -> [N, bottleneck_size].

  The original's normalization (subtract the mean, multiply by 1/std), then
  the frozen graph imported with its input tensor replaced by the batch. A
  graph that takes one image at a time runs once per image.
  """
  pixels = tf.multiply(tf.subtract(batch * 255.0, network.input_mean),
                       1.0 / network.input_std)

  def run(images_in):
    bottleneck, = tf.compat.v1.import_graph_def(
        graph_def, input_map={network.input_tensor: images_in},
        return_elements=[network.bottleneck_tensor], name='network')
    if bottleneck.shape[-1] not in (None, network.bottleneck_size):
      raise PoetsError(
          f'{network.bottleneck_tensor} has {bottleneck.shape[-1]} values, '
          f'not {network.bottleneck_size}: the graph is not the one in '
          f'{network.archive}; replace it with that one.')
    return bottleneck

  if network.batched:
    return run(pixels)
  return tf.map_fn(lambda image: run(image[None])[0], pixels,
                   fn_output_signature=tf.TensorSpec(
                       [network.bottleneck_size], tf.float32))
