"""Modules: resolve a feature extractor, read its sizes, load it into a graph.

The second stage. `resolve_module` turns `--architecture` or `--tfhub_module`
into a handle and the name that bottleneck files and summaries carry;
`module_info` reads the module's image and bottleneck sizes from its files;
`load_module` loads it inside the tf.compat.v1 graph being built, once per
graph that runs it. A module is one of three kinds: the embedded
EfficientNet-Lite builds and any `--tfhub_module` load with `hub.load`, their
sizes read from the module's own signature in saved_model.pb (TF2
SavedModel, or the legacy TF1 Hub format through its `image_feature_vector`
or `default` signature); the codelab's MobileNet and Inception names are
frozen graphs (poets.core.networks.codelab_networks), imported with the
original's preprocessing.

A module URL is downloaded and unpacked here, into --model_dir, and
`hub.load` gets the local folder: importing this module changes nothing in
TF Hub or the environment.
"""

import dataclasses
import functools
import hashlib
import os
import shutil
import tarfile
import tempfile
import urllib.parse
import zlib

from absl import logging
from google.protobuf import message
import tensorflow_hub as hub
from tensorflow.python.saved_model import loader_impl

from poets import errors
from poets import files
from poets.core import image_decoding
from poets.core.networks import architectures
from poets.core.networks import codelab_networks
from poets.core.networks import efficientnet_lite
from poets.errors import PoetsError

OFFLINE_ALTERNATIVES = (
    '--architecture efficientnet_lite0 (the default, built from an installed '
    'package), or --tfhub_module with a local module directory')

# A TF1 Hub module's signatures that give an image feature vector, in the
# order they are looked for.
_TF1_SIGNATURES = ('image_feature_vector', 'default')


@dataclasses.dataclass(frozen=True)
class ModuleSpec:
  """What to load and how, and the name its bottleneck files carry."""
  handle: str
  name: str
  model_dir: str | None = None  # TF Hub's download cache
  input_size: tuple[int, int] | None = None  # for modules that fix none
  # Set for the codelab's frozen-graph networks; `handle` is then the graph.
  network: architectures.CodelabNetwork | None = None
  downloads: files.DownloadLimits = files.DownloadLimits()


@dataclasses.dataclass
class ModuleInfo:
  """A module's sizes and image decoding, known without loading it."""
  spec: ModuleSpec
  image_size: tuple[int, int]
  bottleneck_size: int
  # File bytes -> float32 [H, W, 3] in [0, 1], decoded and resized as this
  # module's bottlenecks are made.
  decode: object


@dataclasses.dataclass
class LoadedModule(ModuleInfo):
  """A module loaded into the current graph, ready to apply to images."""
  apply: object  # images float32 [N, H, W, 3] in [0, 1] -> [N, bottleneck_size]


def _sanitized(handle):
  """The original's module name for file names: separators become '~'."""
  for separator in ('://', '/', ':', '\\'):
    handle = handle.replace(separator, '~')
  return handle


def resolve_module(architecture, tfhub_module, model_dir, input_size=None,
                   downloads=files.DownloadLimits()):
  """Turns --architecture or --tfhub_module into a ModuleSpec.

  Architecture names are taken in any letter case and kept as typed in file
  names, as the original did. The embedded EfficientNet-Lite modules are
  built into `model_dir` on first use; the codelab's MobileNet and Inception
  graphs are found, unpacked or downloaded there as the original did.
  """
  if architecture and tfhub_module:
    raise PoetsError('Pass either --architecture or --tfhub_module, not both.')

  def spec(handle, name):
    return ModuleSpec(handle, name, model_dir, input_size, downloads=downloads)

  if tfhub_module:
    return spec(tfhub_module, _sanitized(tfhub_module))
  architecture = architecture or architectures.DEFAULT_ARCHITECTURE
  if architecture.lower() in architectures.EFFICIENTNET_LITE:
    return spec(efficientnet_lite.ensure_module(architecture.lower(),
                                                model_dir), architecture)
  network = architectures.codelab_network(architecture)
  if network:
    return ModuleSpec(codelab_networks.ensure_graph(network, model_dir,
                                                    downloads),
                      architecture, model_dir, input_size, network, downloads)
  raise PoetsError(
      f"Unknown --architecture '{architecture}'; choose one of: "
      f'{architectures.architecture_choices()}, or pass --tfhub_module.')


def _cache_dir(model_dir):
  """Where downloads go: --model_dir, else TF Hub's default cache folder."""
  return model_dir or os.path.join(tempfile.gettempdir(), 'tfhub_modules')


def _download(handle, model_dir, downloads):
  """The local folder of the module archive at URL `handle`, downloaded and
  unpacked (checked) on first use.

  The folder is named as TF Hub names its cache entries (the SHA-1 of the
  URL), so a module TF Hub cached in --model_dir is used as it is. The
  archive is unpacked in a temporary folder and renamed into place: a killed
  run leaves no half module, and of two runs downloading at once the second
  to finish uses the first one's folder.
  """
  folder = os.path.join(_cache_dir(model_dir),
                        hashlib.sha1(handle.encode('utf8')).hexdigest())
  if os.path.isdir(folder) and os.listdir(folder):
    return folder
  # tfhub.dev serves the archive only when asked for this format.
  parsed = urllib.parse.urlparse(handle)
  query = urllib.parse.urlencode(urllib.parse.parse_qsl(parsed.query) +
                                 [('tf-hub-format', 'compressed')])
  logging.info('Downloading the module %s into %s (once).', handle, folder)
  unpacked = files.temporary_sibling(folder)
  archive = unpacked + '.tgz'  # Hidden, beside it; removed either way.
  try:
    files.download(parsed._replace(query=query).geturl(), archive,
                   seconds=downloads.seconds, limit=downloads.max_bytes)
    with open(archive, 'rb') as f:
      files.extract_checked(handle, f, unpacked)
    os.rename(unpacked, folder)
  except OSError as e:
    if not (os.path.isdir(folder) and os.listdir(folder)):
      raise _download_error(handle, e) from e
  except (tarfile.TarError, EOFError, zlib.error) as e:
    raise _download_error(handle, e) from e
  finally:
    shutil.rmtree(unpacked, ignore_errors=True)
    if os.path.exists(archive):
      os.unlink(archive)
  return folder


def _download_error(handle, error):
  return PoetsError(f'Could not download the module {handle} '
                    f'({errors.first_line(error)}). Without network use '
                    f'{OFFLINE_ALTERNATIVES}.')


def _is_url(handle):
  return handle.startswith(('http://', 'https://'))


def _module_dir(spec):
  """The local folder of a SavedModel or TF1 Hub module, downloaded first
  if `spec.handle` is a URL."""
  if _is_url(spec.handle):
    return _download(spec.handle, spec.model_dir, spec.downloads)
  if not os.path.isdir(spec.handle):
    raise PoetsError(f"Module directory '{spec.handle}' not found; pass "
                     '--tfhub_module a module directory or URL, or use '
                     f'{OFFLINE_ALTERNATIVES}.')
  return spec.handle


def _not_a_module(spec, error):
  return PoetsError(
      f"Could not load the module in '{spec.handle}' "
      f'({errors.first_line(error)}); is it a SavedModel or TF1 Hub '
      'module?')


def _no_feature_vector(spec):
  return PoetsError(
      f"The module in '{spec.handle}' has no image feature vector to call "
      '(no __call__ and no image_feature_vector or default signature).')


def _is_tf1_hub_module(path):
  # TF Hub's own test for its legacy format (hub.load goes by it too).
  return os.path.isfile(os.path.join(path, 'tfhub_module.pb'))


def _dims(shape):
  """A TensorShapeProto's sizes, None where unknown; None if no rank."""
  if shape.unknown_rank:
    return None
  return [dim.size if dim.size >= 0 else None for dim in shape.dim]


def _tf1_signature_shapes(meta_graphs):
  """(input, output) sizes of the image_feature_vector or default signature
  of the graph for tags [], the one hub.load loads."""
  graphs = [m for m in meta_graphs if not m.meta_info_def.tags] or meta_graphs
  signatures = graphs[0].signature_def
  name = next((name for name in _TF1_SIGNATURES if name in signatures), None)
  if name is None or 'default' not in signatures[name].outputs:
    return None
  image = next(iter(signatures[name].inputs.values()))
  return (_dims(image.tensor_shape),
          _dims(signatures[name].outputs['default'].tensor_shape))


def _call_shapes(object_graph):
  """(input, output) sizes of the root object's `__call__`, as its first
  concrete function was traced (the one hub.load's object calls first)."""
  calls = [object_graph.nodes[child.node_id].function
           for child in object_graph.nodes[0].children
           if child.local_name == '__call__']
  if not calls or not calls[0].concrete_functions:
    return None
  function = object_graph.concrete_functions[calls[0].concrete_functions[0]]
  # (args, kwargs); the images are the first positional argument.
  args = function.canonicalized_input_signature.tuple_value.values
  positional = args[0].tuple_value.values if args else []
  if not positional or not positional[0].HasField('tensor_spec_value') or (
      not function.output_signature.HasField('tensor_spec_value')):
    return None
  return (_dims(positional[0].tensor_spec_value.shape),
          _dims(function.output_signature.tensor_spec_value.shape))


def _signature_shapes(spec, path):
  """The image input's and the feature vector's sizes, from saved_model.pb
  alone: nothing is loaded and no variable is read."""
  try:
    saved_model = loader_impl.parse_saved_model(path)
  except (OSError, message.DecodeError) as e:
    raise _not_a_module(spec, e) from e
  if _is_tf1_hub_module(path):
    shapes = _tf1_signature_shapes(saved_model.meta_graphs)
  else:
    shapes = _call_shapes(saved_model.meta_graphs[0].object_graph_def)
  if shapes is None:
    raise _no_feature_vector(spec)
  return shapes


def module_info(spec):
  """The module's image and bottleneck sizes, read from its files.

  Image size comes from the module's input signature, else the spec's
  `input_size` (height, width), else an error; the bottleneck size from its
  output. The codelab's networks have both fixed, as the original did (their
  graph is read and checked here, so a wrong one is named before any work).
  Nothing is loaded into a graph; a URL is downloaded into `model_dir`.
  """
  if spec.network:
    codelab_networks.read_graph(spec.network, spec.handle)
    return _codelab_info(spec)
  image_shape, output_shape = _signature_shapes(spec, _module_dir(spec))
  height, width = (image_shape[1:3] if image_shape and len(image_shape) == 4
                   else (None, None))
  if height is None or width is None:
    if not spec.input_size:
      raise PoetsError(
          f"The module '{spec.name}' does not fix its image size; pass "
          '--input_height and --input_width.')
    height, width = spec.input_size
  bottleneck_size = output_shape[-1] if output_shape else None
  if bottleneck_size is None:
    raise PoetsError(f"The module '{spec.name}' does not fix the size of its "
                     'output, so it cannot serve as a feature vector.')
  return ModuleInfo(spec=spec,
                    image_size=(height, width),
                    bottleneck_size=bottleneck_size,
                    decode=functools.partial(image_decoding.decode_and_resize,
                                             height=height,
                                             width=width))


def _codelab_info(spec):
  network = spec.network
  return ModuleInfo(
      spec=spec, image_size=(network.image_size, network.image_size),
      bottleneck_size=network.bottleneck_size,
      decode=functools.partial(codelab_networks.decode_and_resize, network))


def load_module(spec):
  """Loads the module into the current default graph: call it once per
  graph that runs the module (each call loads it again)."""
  if spec.network:
    info = _codelab_info(spec)
    apply = functools.partial(
        codelab_networks.bottlenecks, spec.network,
        codelab_networks.read_graph(spec.network, spec.handle))
  else:
    info = module_info(spec)
    apply = _hub_apply(spec, _module_dir(spec))
  return LoadedModule(spec=spec, image_size=info.image_size,
                      bottleneck_size=info.bottleneck_size,
                      decode=info.decode, apply=apply)


def _hub_apply(spec, path):
  """hub.load of the local folder `path`; returns images -> features."""
  try:
    obj = hub.load(path)
  except Exception as e:  # TensorFlow raises many types; all mean the same.
    raise _not_a_module(spec, e) from e
  if _is_tf1_hub_module(path):
    signature = next(obj.signatures[name] for name in _TF1_SIGNATURES
                     if name in obj.signatures)
    input_key = next(iter(signature.structured_input_signature[1]))
    return lambda images: signature(**{input_key: images})['default']
  return lambda images: obj(images)
