"""The settings of one retraining run: one flat record, one field per flag.

retrain.py defines a flag for every field below, under the same name and with
the same default, and builds RetrainSettings from the parsed flags by name
(`from_flags`), so a flag cannot reach the wrong setting. Each stage reads
the fields it needs where it uses them: `settings.learning_rate` in training,
`settings.output_graph` in export. Nothing below the scripts reads flags.
"""

import dataclasses
import math
import re

from poets.core import graph_names
from poets.errors import PoetsError

DEFAULT_IMAGE_DIR = 'tf_files/flower_photos'
# How --output_tflite is stored (poets.extras.tflite_converter), and how
# many photos int8 calibrates on.
QUANTIZATIONS = ('none', 'dynamic', 'int8')
CALIBRATION_IMAGES = 300
# label_image.py --imagenet: the embedded module's own classifier, frozen once.
IMAGENET_GRAPH = 'tf_files/imagenet_graph.pb'
IMAGENET_LABELS = 'tf_files/imagenet_labels.txt'
# label_image.py's size for an input that fixes none, and its labels when
# the model carries none.
DEFAULT_INPUT_SIZE = 224
DEFAULT_LABELS = 'tf_files/retrained_labels.txt'
MAX_IMAGE_SIZE = 4096  # pixels a side, for --input_height/--input_width
# A photo file larger than this is not read (a camera's largest JPEG is a
# few hundred MB; a 60 GB sparse file would fill memory).
MAX_IMAGE_BYTES = 512 * 2**20
MAX_RANDOM_SEED = 2**31 - 1
_OP_NAME = re.compile(r'[A-Za-z0-9.][A-Za-z0-9_.\-]*')


@dataclasses.dataclass(frozen=True)
class Distortions:
  """The original's training-time distortions, each a percentage (0 = off)."""
  flip_left_right: bool = False
  random_crop: int = 0
  random_scale: int = 0
  random_brightness: int = 0

  @property
  def enabled(self):
    return (self.flip_left_right or self.random_crop != 0 or
            self.random_scale != 0 or self.random_brightness != 0)


@dataclasses.dataclass(frozen=True)
class RetrainSettings:
  """Everything a run needs; the defaults are the codelab's."""
  # Images and their split.
  image_dir: str = DEFAULT_IMAGE_DIR
  testing_percentage: float = 10
  validation_percentage: float = 10
  # The feature extractor.
  architecture: str = ''
  tfhub_module: str = ''
  model_dir: str = 'tf_files/models'
  download_timeout: int = 900  # seconds for one download, in all
  download_max_mb: int = 2048  # MiB one download may take
  input_height: int = 0  # 0: the module's own size.
  input_width: int = 0
  # Bottlenecks.
  bottleneck_dir: str = 'tf_files/bottlenecks'
  # Training.
  how_many_training_steps: int = 4000
  learning_rate: float = 0.01
  train_batch_size: int = 100
  eval_step_interval: int = 10
  validation_batch_size: int = 100
  test_batch_size: int = -1
  print_misclassified_test_images: bool = False
  random_seed: int | None = None
  flip_left_right: bool = False
  random_crop: int = 0
  random_scale: int = 0
  random_brightness: int = 0
  summaries_dir: str = ''  # '': tf_files/training_summaries/<module name>.
  # Fine-tuning the network's top blocks after the new layer (0: none).
  fine_tune_blocks: int = 0
  fine_tune_steps: int = 40
  fine_tune_learning_rate: float = 0.0001
  checkpoint_path: str = 'tf_files/_retrain_checkpoint'
  # Export.
  final_tensor_name: str = graph_names.FINAL_TENSOR_NAME
  output_graph: str = 'tf_files/retrained_graph.pb'
  output_labels: str = 'tf_files/retrained_labels.txt'
  intermediate_output_graphs_dir: str = 'tf_files/intermediate_graph'
  intermediate_store_frequency: int = 0
  saved_model_dir: str = ''
  output_tflite: str = ''  # '': no TensorFlow Lite model.
  tflite_quantization: str = 'none'  # One of QUANTIZATIONS.

  @property
  def input_size(self):
    """(height, width) for a module that fixes none, or None."""
    if self.input_height or self.input_width:
      return (self.input_height, self.input_width)
    return None

  @property
  def distortions(self):
    return Distortions(self.flip_left_right, self.random_crop,
                       self.random_scale, self.random_brightness)

  def replace(self, **changes):
    return dataclasses.replace(self, **changes)


# --input_std divides each pixel: 0 or less (or not finite) is a mistake.
INPUT_STD_RULE = 'must be a positive finite number'


def is_valid_input_std(std):
  return math.isfinite(std) and std > 0


def check_input_std(std):
  """The library's side of the flag's check, for callers without flags."""
  if not is_valid_input_std(std):
    raise PoetsError(f'--input_std={std:g} {INPUT_STD_RULE} (255 for this '
                     "project's graphs).")


FINAL_TENSOR_NAME_RULE = (
    'must be an operation name (letters, digits, ".", "_", "-", starting with '
    'a letter or digit) not taken by the graph '
    f'({", ".join(graph_names.TAKEN_NAMES)})')


def is_valid_final_tensor_name(name):
  return bool(_OP_NAME.fullmatch(name)) and name not in graph_names.TAKEN_NAMES


def warnings(settings):
  """Settings that are allowed but cannot do what a user wants."""
  found = []
  if settings.learning_rate == 0:
    found.append('--learning_rate=0: the new layer will not learn; the '
                 'graph keeps its random initial weights.')
  if settings.how_many_training_steps == 0:
    found.append('--how_many_training_steps=0: nothing will be trained; the '
                 'graph keeps its random initial weights.')
  return found


def field_names():
  """The settings' names, which are also retrain.py's flag names."""
  return [field.name for field in dataclasses.fields(RetrainSettings)]


def from_flags(flag_values):
  """RetrainSettings from parsed absl flags, every field by its flag's name."""
  return RetrainSettings(**{name: flag_values[name].value
                            for name in field_names() if name in flag_values})


@dataclasses.dataclass
class LabelConfig:
  """What to label with which graph; defaults fit this project's graphs."""
  graph: str = 'tf_files/retrained_graph.pb'
  labels: str | None = None  # None: a .tflite's own, else DEFAULT_LABELS.
  images: list[str] = dataclasses.field(default_factory=list)
  image_dir: str = ''
  input_layer: str = graph_names.INPUT_NAME
  output_layer: str = graph_names.FINAL_TENSOR_NAME
  input_height: int | None = None  # None: the input's static shape, or 224.
  input_width: int | None = None
  input_mean: float = graph_names.INPUT_MEAN
  input_std: float = graph_names.INPUT_STD
  top_k: int = 5
  batch_size: int = graph_names.BATCH_SIZE
  allow_io_ops: bool = False  # Run graphs holding frozen_graphs.IO_OPS.


@dataclasses.dataclass
class ConvertConfig:
  """tflite_convert.py's flags: a frozen graph that already exists, by its
  layer names, as the codelab's tflite_convert command took it."""
  graph_def_file: str = 'tf_files/retrained_graph.pb'
  output_file: str = 'tf_files/optimized_graph.tflite'
  input_array: str = graph_names.INPUT_NAME
  output_array: str = graph_names.FINAL_TENSOR_NAME
  labels: str = DEFAULT_LABELS
  quantization: str = 'none'
  image_dir: str = ''
  input_mean: float = graph_names.INPUT_MEAN
  input_std: float = graph_names.INPUT_STD
  allow_io_ops: bool = False  # Convert graphs holding frozen_graphs.IO_OPS.


@dataclasses.dataclass
class EvaluateConfig:
  """What evaluate.py measures; defaults are the codelab's."""
  models: list[str] = dataclasses.field(default_factory=list)
  image_dir: str = DEFAULT_IMAGE_DIR
  testing_percentage: float = 10
  validation_percentage: float = 10
  labels: str | None = None  # None: a .tflite's own, else label_image's.
  input_layer: str = LabelConfig.input_layer
  output_layer: str = LabelConfig.output_layer
  input_mean: float = LabelConfig.input_mean
  input_std: float = LabelConfig.input_std
  batch_size: int = LabelConfig.batch_size
