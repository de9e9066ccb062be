"""TensorFlow Lite metadata: labels and input normalization inside the .tflite.

MediaPipe Tasks' ImageClassifier, today's successor of the codelab's Android
app and of the TFLite Task Library, refuses a float model that does not say
how to normalize its input, and names classes from a labels file packed in
the model. `add_metadata` writes what MediaPipe's image-classifier metadata
writer writes: a ModelMetadata flatbuffer (the input: an RGB image with its
NormalizationOptions and value range; the output: probabilities with the
labels file as TENSOR_AXIS_LABELS) in the model's TFLITE_METADATA buffer, and
the labels file appended to the model as a zip archive.

The flatbuffer classes are MediaPipe's generated metadata schema, one pure
Python file of the mediapipe package. MediaPipe's own writer module cannot
run from the wheel: it imports a compiled part the wheel lacks only to
compute the minimum parser version, which for the fields written here is
1.0.0 (MediaPipe's metadata_version.cc raises it only for tokenizers,
tensor groups, subgraph process units, audio, versioned files and custom
metadata). The schema file is loaded by its path because importing the
mediapipe package imports TensorFlow, and label_image.py reads the labels of
a .tflite without it. The model's own flatbuffer goes through LiteRT's
generated TFLite schema.
"""

import functools
import importlib.util
import io
import os
import zipfile

from ai_edge_litert import schema_py_generated as model_schema
import flatbuffers
import numpy as np

from poets.errors import PoetsError

METADATA_NAME = 'TFLITE_METADATA'  # The model's metadata entry MediaPipe reads.
METADATA_IDENTIFIER = b'M001'
MODEL_IDENTIFIER = b'TFL3'
MIN_PARSER_VERSION = '1.0.0'
LABELS_FILE = 'labels.txt'

_INSTALL = 'pip install -r requirements.txt'


@functools.cache
def metadata_schema():
  """MediaPipe's generated metadata schema module (flatbuffers classes)."""
  spec = importlib.util.find_spec('mediapipe')  # Finds; does not import.
  if spec is None or not spec.submodule_search_locations:
    raise PoetsError('TensorFlow Lite metadata needs the mediapipe package, '
                     f'which is not installed; {_INSTALL}.')
  path = os.path.join(spec.submodule_search_locations[0], 'tasks', 'metadata',
                      'metadata_schema_py_generated.py')
  loader = importlib.util.spec_from_file_location('poets_metadata_schema',
                                                  path)
  module = importlib.util.module_from_spec(loader)
  loader.loader.exec_module(module)
  return module


def _tensor_metadata(name, description, content_type, properties, tensor_type,
                     low, high):
  schema = metadata_schema()
  tensor = schema.TensorMetadataT()
  tensor.name = name
  tensor.description = description
  tensor.content = schema.ContentT()
  tensor.content.contentPropertiesType = content_type
  tensor.content.contentProperties = properties
  if tensor_type == model_schema.TensorType.FLOAT32:
    tensor.stats = schema.StatsT()
    tensor.stats.min = [low]
    tensor.stats.max = [high]
  return tensor


def build_metadata(labels, input_mean, input_std, input_type, output_type,
                   name, description):
  """The ModelMetadata flatbuffer bytes for an image classifier whose input
  is (pixel - input_mean) / input_std and whose output scores `labels`."""
  schema = metadata_schema()
  image = schema.ImagePropertiesT()
  image.colorSpace = schema.ColorSpaceType.RGB
  model_input = _tensor_metadata(
      'image', f'RGB image, each pixel (0-255) as (pixel - {input_mean:g}) / '
      f'{input_std:g}.', schema.ContentProperties.ImageProperties, image,
      input_type, (0 - input_mean) / input_std, (255 - input_mean) / input_std)
  normalization = schema.ProcessUnitT()
  normalization.optionsType = schema.ProcessUnitOptions.NormalizationOptions
  normalization.options = schema.NormalizationOptionsT()
  normalization.options.mean = [float(input_mean)]
  normalization.options.std = [float(input_std)]
  model_input.processUnits = [normalization]

  model_output = _tensor_metadata(
      'probability', f'Probabilities of the {len(labels)} labels, in the '
      'order of the labels file.', schema.ContentProperties.FeatureProperties,
      schema.FeaturePropertiesT(), output_type, 0.0, 1.0)
  labels_file = schema.AssociatedFileT()
  labels_file.name = LABELS_FILE
  labels_file.description = 'The labels of the output, one per line.'
  labels_file.type = schema.AssociatedFileType.TENSOR_AXIS_LABELS
  model_output.associatedFiles = [labels_file]

  subgraph = schema.SubGraphMetadataT()
  subgraph.inputTensorMetadata = [model_input]
  subgraph.outputTensorMetadata = [model_output]
  metadata = schema.ModelMetadataT()
  metadata.name = name
  metadata.description = description
  metadata.subgraphMetadata = [subgraph]
  metadata.minParserVersion = MIN_PARSER_VERSION
  builder = flatbuffers.Builder(0)
  builder.Finish(metadata.Pack(builder), METADATA_IDENTIFIER)
  return bytes(builder.Output())


def _model(data):
  return model_schema.ModelT.InitFromObj(
      model_schema.Model.GetRootAs(data, 0))


def add_metadata(data, labels, input_mean=0.0, input_std=255.0,
                 name='retrained_graph', description='',
                 labels_source='The labels file'):
  """The .tflite bytes `data` with metadata and `labels` packed in: what
  MediaPipe Tasks' ImageClassifier needs and nothing else. Any metadata the
  model had is replaced. `labels_source` names the labels in errors."""
  model = _model(data)
  subgraph = model.subgraphs[0]
  if len(subgraph.inputs) != 1 or len(subgraph.outputs) != 1:
    raise PoetsError('TensorFlow Lite metadata is written for models with one '
                     f'input and one output; this one has '
                     f'{len(subgraph.inputs)} and {len(subgraph.outputs)}.')
  classes = int(subgraph.tensors[subgraph.outputs[0]].shape[-1])
  if classes != len(labels):
    raise PoetsError(f'{labels_source} has {len(labels)} labels but the model '
                     f'gives {classes} scores; pass the labels file written '
                     'with this graph.')
  types = [subgraph.tensors[index].type
           for index in (subgraph.inputs[0], subgraph.outputs[0])]
  buffer = model_schema.BufferT()
  buffer.data = np.frombuffer(
      build_metadata(labels, input_mean, input_std, *types, name,
                     description or 'Retrained by TensorFlow for Poets: '
                     'classifies a photo into the labels packed in this '
                     'model.'), np.uint8)
  entries = [m for m in model.metadata or []
             if m.name.decode() == METADATA_NAME]
  if entries:
    model.buffers[entries[0].buffer] = buffer
  else:
    model.buffers.append(buffer)
    entry = model_schema.MetadataT()
    entry.name = METADATA_NAME
    entry.buffer = len(model.buffers) - 1
    model.metadata = (model.metadata or []) + [entry]
  builder = flatbuffers.Builder(len(data) + 1024)
  builder.Finish(model.Pack(builder), MODEL_IDENTIFIER)
  packed = io.BytesIO(bytes(builder.Output()))
  # The associated files follow the flatbuffer as a zip archive, which
  # readers find from its end.
  with zipfile.ZipFile(packed, 'a') as archive:
    archive.writestr(LABELS_FILE, ''.join(f'{label}\n' for label in labels))
  return packed.getvalue()


def _metadata_buffer(data):
  model = model_schema.Model.GetRootAs(data, 0)
  for i in range(model.MetadataLength()):
    entry = model.Metadata(i)
    if entry.Name() == METADATA_NAME.encode():
      return model.Buffers(entry.Buffer()).DataAsNumpy().tobytes()
  return None


def read_labels(data):
  """The labels packed in the .tflite bytes `data` for its output, or None
  when it carries no labels file."""
  buffer = _metadata_buffer(data)
  if not buffer:
    return None
  schema = metadata_schema()
  metadata = schema.ModelMetadata.GetRootAs(buffer, 0)
  if not metadata.SubgraphMetadataLength():
    return None
  subgraph = metadata.SubgraphMetadata(0)
  names = []
  for i in range(subgraph.OutputTensorMetadataLength()):
    tensor = subgraph.OutputTensorMetadata(i)
    names += [tensor.AssociatedFiles(j).Name().decode()
              for j in range(tensor.AssociatedFilesLength())
              if tensor.AssociatedFiles(j).Type() ==
              schema.AssociatedFileType.TENSOR_AXIS_LABELS]
  if not names:
    return None
  try:
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
      text = archive.read(names[0]).decode('utf-8')
  except (zipfile.BadZipFile, KeyError) as e:
    raise PoetsError(f'the model names its labels file {names[0]} but does '
                     'not carry it') from e
  labels = text.splitlines()
  while labels and not labels[-1]:
    labels.pop()
  return labels
