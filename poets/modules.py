"""Modules: resolve a feature extractor and load it into the current graph.

The second stage. `resolve_module` turns `--architecture` or `--tfhub_module`
into a handle and the name that bottleneck files and summaries carry;
`load_module` loads it inside the tf.compat.v1 graph being built. A module is
one of three kinds: the embedded EfficientNet-Lite builds and any
`--tfhub_module` load with `hub.load`, their image and bottleneck sizes read
from the module's own signature (TF2 SavedModel, or the legacy TF1 Hub format
through its `image_feature_vector` or `default` signature); the codelab's
MobileNet and Inception names are frozen graphs (poets.codelab_networks),
imported with the original's preprocessing.
"""

import dataclasses
import functools
import os
import urllib.request

import tensorflow_hub as hub
from tensorflow_hub import compressed_module_resolver
from tensorflow_hub import registry
from tensorflow_hub import resolver

from poets import codelab_networks
from poets import efficientnet_lite
from poets import files
from poets import images
from poets.errors import PoetsError

DEFAULT_ARCHITECTURE = 'efficientnet_lite0'

OFFLINE_ALTERNATIVES = (
    '--architecture efficientnet_lite0 (the default, built from an installed '
    'package), or --tfhub_module with a local module directory')


@dataclasses.dataclass(frozen=True)
class ModuleSpec:
  """What to load and how, and the name its bottleneck files carry."""
  handle: str
  name: str
  model_dir: str | None = None  # TF Hub's download cache
  input_size: tuple[int, int] | None = None  # for modules that fix none
  # Set for the codelab's frozen-graph networks; `handle` is then the graph.
  network: codelab_networks.CodelabNetwork | None = None


@dataclasses.dataclass
class LoadedModule:
  """A module loaded into the current graph, ready to apply to images."""
  spec: ModuleSpec
  image_size: tuple[int, int]
  bottleneck_size: int
  apply: object  # images float32 [N, H, W, 3] in [0, 1] -> [N, bottleneck_size]
  # File bytes -> float32 [H, W, 3] in [0, 1], decoded and resized as this
  # module's bottlenecks are made.
  decode: object


def architecture_choices():
  """The names --architecture accepts, for help text and errors."""
  return ', '.join([*efficientnet_lite.VARIANTS, codelab_networks.CHOICES])


def is_architecture(architecture):
  """Whether resolve_module knows --architecture (any letter case; '' is the
  default), so a typo is refused before any run starts."""
  return (not architecture or architecture.lower() in efficientnet_lite.VARIANTS
          or codelab_networks.find(architecture) is not None)


def _sanitized(handle):
  """The original's module name for file names: separators become '~'."""
  for separator in ('://', '/', ':', '\\'):
    handle = handle.replace(separator, '~')
  return handle


def resolve_module(architecture, tfhub_module, model_dir, input_size=None):
  """Turns --architecture or --tfhub_module into a ModuleSpec.

  Architecture names are taken in any letter case and kept as typed in file
  names, as the original did. The embedded EfficientNet-Lite modules are
  built into `model_dir` on first use; the codelab's MobileNet and Inception
  graphs are found, unpacked or downloaded there as the original did.
  """
  if architecture and tfhub_module:
    raise PoetsError('Pass either --architecture or --tfhub_module, not both.')

  def spec(handle, name):
    return ModuleSpec(handle, name, model_dir, input_size)

  if tfhub_module:
    return spec(tfhub_module, _sanitized(tfhub_module))
  architecture = architecture or DEFAULT_ARCHITECTURE
  if architecture.lower() in efficientnet_lite.VARIANTS:
    return spec(efficientnet_lite.ensure_module(architecture.lower(),
                                                model_dir), architecture)
  network = codelab_networks.find(architecture)
  if network:
    return ModuleSpec(codelab_networks.ensure_graph(network, model_dir),
                      architecture, model_dir, input_size, network)
  raise PoetsError(
      f"Unknown --architecture '{architecture}'; choose one of: "
      f'{architecture_choices()}, or pass --tfhub_module.')


class _CheckedArchiveResolver(
    compressed_module_resolver.HttpCompressedFileResolver):
  """TF Hub's download-and-cache for archive URLs, with a checked unpack."""

  def __call__(self, handle):
    def download(handle, temp_dir):
      request = urllib.request.Request(
          self._append_compressed_format_query(handle))
      files.extract_checked(handle, self._call_urlopen(request), temp_dir)

    return resolver.atomic_download(
        handle, download, compressed_module_resolver._module_dir(handle),  # pylint: disable=protected-access
        self._lock_file_timeout_sec())


registry.resolver.add_implementation(_CheckedArchiveResolver())


def _is_url(handle):
  return handle.startswith(('http://', 'https://'))


def _hub_load(handle, model_dir):
  """hub.load with the download cache in model_dir and one-line errors."""
  if model_dir:
    os.environ['TFHUB_CACHE_DIR'] = os.path.abspath(model_dir)
  if not _is_url(handle) and not os.path.isdir(handle):
    raise PoetsError(f"Module directory '{handle}' not found; pass "
                     '--tfhub_module a module directory or URL, or use '
                     f'{OFFLINE_ALTERNATIVES}.')
  try:
    return hub.load(handle)
  except PoetsError:
    raise
  except Exception as e:  # hub and urllib raise many types; all mean the same.
    first_line = (str(e).strip().splitlines() or [type(e).__name__])[0]
    if _is_url(handle):
      raise PoetsError(
          f'Could not download the module {handle} ({first_line}). Without '
          f'network use {OFFLINE_ALTERNATIVES}.') from e
    raise PoetsError(f"Could not load the module in '{handle}' "
                     f'({first_line}); is it a SavedModel or TF1 Hub module?'
                     ) from e


def _static_dim(dim):
  return dim if isinstance(dim, int) else None


def _tf1_signature(obj):
  signatures = getattr(obj, 'signatures', {}) or {}
  for name in ('image_feature_vector', 'default'):
    if name in signatures:
      return signatures[name]
  return None


def load_module(spec):
  """Loads the module into the current default graph.

  Image size comes from the module's input signature, else the spec's
  `input_size` (height, width), else an error; the bottleneck size from its
  output. The codelab's networks have both fixed, as the original did.
  """
  if spec.network:
    return _load_codelab_network(spec)
  obj = _hub_load(spec.handle, spec.model_dir)
  signature = _tf1_signature(obj) if getattr(
      obj, '_is_hub_module_v1', False) else None
  if signature is not None:
    input_spec = next(iter(signature.structured_input_signature[1].values()))
    input_key = next(iter(signature.structured_input_signature[1]))
    output_spec = signature.structured_outputs['default']

    def apply(images):
      return signature(**{input_key: images})['default']
  elif callable(obj) and hasattr(obj.__call__, 'concrete_functions') and (
      obj.__call__.concrete_functions):
    function = obj.__call__.concrete_functions[0]
    input_spec = function.structured_input_signature[0][0]
    output_spec = function.structured_outputs

    def apply(images):
      return obj(images)
  else:
    raise PoetsError(
        f"The module in '{spec.handle}' has no image feature vector to call "
        '(no __call__ and no image_feature_vector or default signature).')
  shape = input_spec.shape
  height, width = _static_dim(shape[1]), _static_dim(shape[2])
  if height is None or width is None:
    if not spec.input_size:
      raise PoetsError(
          f"The module '{spec.name}' does not fix its image size; pass "
          '--input_height and --input_width.')
    height, width = spec.input_size
  bottleneck_size = _static_dim(output_spec.shape[-1])
  if bottleneck_size is None:
    raise PoetsError(f"The module '{spec.name}' does not fix the size of its "
                     'output, so it cannot serve as a feature vector.')
  return LoadedModule(spec=spec, image_size=(height, width),
                      bottleneck_size=bottleneck_size, apply=apply,
                      decode=functools.partial(images.decode_and_resize,
                                               height=height, width=width))


def _load_codelab_network(spec):
  network = spec.network
  graph_def = codelab_networks.read_graph(network, spec.handle)
  return LoadedModule(
      spec=spec, image_size=(network.image_size, network.image_size),
      bottleneck_size=network.bottleneck_size,
      apply=functools.partial(codelab_networks.bottlenecks, network,
                              graph_def),
      decode=functools.partial(codelab_networks.decode_and_resize, network))
