"""The settings of one retraining run: one flat record, one field per flag.

retrain.py defines a flag for every field below, under the same name and with
the same default, and builds RetrainSettings from the parsed flags by name
(`from_flags`), so a flag cannot reach the wrong setting. Each stage reads
the fields it needs where it uses them: `settings.learning_rate` in training,
`settings.output_graph` in export. Nothing below the scripts reads flags.
"""

import dataclasses
import re

from poets import images

MAX_IMAGE_SIZE = 4096  # pixels a side, for --input_height/--input_width
MAX_RANDOM_SEED = 2**31 - 1
# Top-level names the retrained graph already uses: a softmax given one of
# them would silently become `<name>_1` and export would look for the wrong
# tensor.
_TAKEN_NAMES = frozenset(['input', 'final_retrain_ops', 'cross_entropy',
                          'train', 'accuracy', 'Placeholder', 'init', 'save'])
_OP_NAME = re.compile(r'[A-Za-z0-9.][A-Za-z0-9_.\-]*')


@dataclasses.dataclass(frozen=True)
class RetrainSettings:
  """Everything a run needs; the defaults are the codelab's."""
  # Images and their split.
  image_dir: str = images.DEFAULT_IMAGE_DIR
  testing_percentage: float = 10
  validation_percentage: float = 10
  # The feature extractor.
  architecture: str = ''
  tfhub_module: str = ''
  model_dir: str = 'tf_files/models'
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
  fine_tune_learning_rate: float = 0.01
  checkpoint_path: str = 'tf_files/_retrain_checkpoint'
  # Export.
  final_tensor_name: str = 'final_result'
  output_graph: str = 'tf_files/retrained_graph.pb'
  output_labels: str = 'tf_files/retrained_labels.txt'
  intermediate_output_graphs_dir: str = 'tf_files/intermediate_graph'
  intermediate_store_frequency: int = 0
  saved_model_dir: str = ''
  output_tflite: str = ''  # '': no TensorFlow Lite model.
  tflite_quantization: str = 'none'  # One of tflite.QUANTIZATIONS.
  # Not a retrain.py flag: experiments.py's images_per_class sweep.
  images_per_class: int | None = None

  @property
  def input_size(self):
    """(height, width) for a module that fixes none, or None."""
    if self.input_height or self.input_width:
      return (self.input_height, self.input_width)
    return None

  @property
  def distortions(self):
    return images.Distortions(self.flip_left_right, self.random_crop,
                              self.random_scale, self.random_brightness)

  def replace(self, **changes):
    return dataclasses.replace(self, **changes)


def is_valid_final_tensor_name(name):
  return bool(_OP_NAME.fullmatch(name)) and name not in _TAKEN_NAMES


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
