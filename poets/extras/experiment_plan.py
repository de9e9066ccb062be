"""Experiments: the plan of a grid of retrains.

The codelab asks learners to vary the learning rate, the training steps and
the number of images, to time CPU against GPU and to compare networks.
`experiments.py` at the top level turns `--sweep key=v1,v2,...` flags into
`Sweep`s; here they become an `Experiment`: runs (the cross product of all
sweeps) in a folder of their own, so no command overwrites an earlier one's
answers. poets.extras.experiment_runs runs them, and
poets.extras.experiment_reports makes the outcomes a table and plots.
"""

import dataclasses
import datetime
import itertools
import os
import re

from poets import files
from poets import settings
from poets import startup
from poets.errors import PoetsError
from poets.extras import experiment_reports

DEFAULT_EXPERIMENTS_DIR = os.path.join('tf_files', 'experiments')
# Sweep keys that are not retrain flags.
IMAGES_PER_CLASS = 'images_per_class'
DEVICE = 'device'
SPECIAL_KEYS = (IMAGES_PER_CLASS, DEVICE)
DEVICES = ('cpu', 'gpu')
# Retrain flags that every run sets for itself or that change no result.
UNSWEEPABLE_FLAGS = ('output_graph', 'output_labels', 'summaries_dir',
                     'checkpoint_path', 'intermediate_output_graphs_dir',
                     'saved_model_dir', 'logging_verbosity')

LOG_NAME = 'retrain.log'

NO_GPU_NOTE = (
    'No GPU: TensorFlow sees none on this machine, so the device=gpu runs are '
    'left out. Where it sees one, each device=gpu run keeps the GPU and each '
    'device=cpu run hides it (CUDA_VISIBLE_DEVICES=-1), and the table compares '
    'their bottleneck, training and run seconds.')


@dataclasses.dataclass(frozen=True)
class Sweep:
  """One --sweep: a key and the values to try, as typed."""
  key: str
  values: tuple[str, ...]


@dataclasses.dataclass
class Run:
  """One point of the grid and where its outputs go."""
  values: dict  # sweep key -> value as typed, in sweep order
  config: settings.RetrainSettings
  dir: str  # graph, labels, checkpoint and log of this run
  device: str = ''  # 'cpu', 'gpu' or '' for TensorFlow's choice
  images_per_class: int | None = None  # training images kept; None: all

  @property
  def name(self):
    return run_name(self.values)

  @property
  def log_path(self):
    return os.path.join(self.dir, LOG_NAME)


@dataclasses.dataclass
class Experiment:
  """One experiments.py command: its runs and the folder they all go in.

  The folder is new for every command (named by its start and its keys), so
  a later experiment never overwrites an earlier one's table, plots or runs.
  """
  name: str  # '2026-11-24_185950_learning_rate'
  dir: str  # <experiments_dir>/<name>: table, plots, one folder per run
  summaries_dir: str  # TensorBoard's --logdir for it: one folder per run
  sweeps: list[Sweep]
  runs: list[Run]
  started: str  # 'YYYY-MM-DD HH:MM:SS'
  command: str = ''
  notes: list[str] = dataclasses.field(default_factory=list)  # said once

  @property
  def keys(self):
    return [sweep.key for sweep in self.sweeps]


def _safe(value):
  """A value as it may appear in a folder name."""
  return re.sub(r'[^\w.+-]', '~', value)


def run_name(values):
  """'learning_rate=0.01,how_many_training_steps=500': a folder per run."""
  return ','.join(f'{key}={_safe(value)}' for key, value in values.items())


def _images_per_class(text):
  """'all' -> None, a positive integer -> itself."""
  if text == 'all':
    return None
  if not text.isdigit() or int(text) < 1:
    raise PoetsError(f"--sweep {IMAGES_PER_CLASS}: '{text}' is neither a "
                     'positive whole number nor all.')
  return int(text)


def parse_sweep(text, flag_names):
  """'key=v1,v2,...' -> Sweep; `flag_names` are the retrain flags."""
  key, separator, listed = text.partition('=')
  key = key.strip()
  values = tuple(value.strip() for value in listed.split(','))
  if not separator or not key or not all(values):
    raise PoetsError(f"--sweep '{text}': expected key=value1,value2,... "
                     '(e.g. learning_rate=0.005,0.01).')
  sweepable = sorted(set(flag_names) - set(UNSWEEPABLE_FLAGS)) + list(
      SPECIAL_KEYS)
  if key not in sweepable:
    raise PoetsError(f"--sweep: cannot sweep '{key}'; sweep one of "
                     f"{', '.join(sweepable)}.")
  if len({_safe(value) for value in values}) < len(values):
    raise PoetsError(f'--sweep {key}: a value repeats.')
  if key == IMAGES_PER_CLASS:
    for value in values:
      _images_per_class(value)
  if key == DEVICE and not set(values) <= set(DEVICES):
    raise PoetsError(f"--sweep {DEVICE}: the values are {' and '.join(DEVICES)}"
                     f", not {', '.join(sorted(set(values) - set(DEVICES)))}.")
  return Sweep(key, values)


def _per_run(config, run_dir, summaries_dir):
  """The config with the run's own outputs, so runs overwrite nothing."""
  def inside(path):
    return os.path.join(run_dir, os.path.basename(path))

  return config.replace(
      output_graph=inside(config.output_graph),
      output_labels=inside(config.output_labels),
      intermediate_output_graphs_dir=inside(
          config.intermediate_output_graphs_dir),
      saved_model_dir=config.saved_model_dir and inside(config.saved_model_dir),
      output_tflite=config.output_tflite and inside(config.output_tflite),
      summaries_dir=summaries_dir,
      checkpoint_path=inside(config.checkpoint_path))


def gpu_available():
  # TensorFlow only when a device sweep asks: planning needs none.
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  return bool(tf.config.list_physical_devices('GPU'))


def _without_missing_gpu(sweeps):
  """The sweeps, less device=gpu where TensorFlow sees no GPU; and notes.

  Said once for the whole experiment rather than as a row per run that
  could not run.
  """
  device = next((s for s in sweeps if s.key == DEVICE), None)
  if device is None or 'gpu' not in device.values or gpu_available():
    return sweeps, []
  values = tuple(value for value in device.values if value != 'gpu')
  if not values:
    raise PoetsError(f'--sweep {DEVICE}=gpu: TensorFlow sees no GPU on this '
                     'machine; run it where it does, or add cpu.')
  return [Sweep(DEVICE, values) if s is device else s for s in sweeps], [
      NO_GPU_NOTE]


def _check_inputs(configs, check):
  """Each run's image folder and module, checked by `check` (a run's own
  first check, pipeline.check_inputs) each distinct one once, so that a typo
  stops the command before it writes anything. Their log lines are left to
  the runs, which log them."""
  checked = set()
  for config in configs:
    inputs = (config.image_dir, config.testing_percentage,
              config.validation_percentage, config.architecture,
              config.tfhub_module, config.model_dir, config.input_size,
              config.bottleneck_dir)
    if inputs not in checked:
      with startup.warnings_only():
        check(config)
      checked.add(inputs)


def _new_folder(parent, stem):
  """Creates and returns parent/stem (or stem_2, ...): never an old one."""
  for attempt in itertools.count(1):
    name = stem if attempt == 1 else f'{stem}_{attempt}'
    try:
      os.makedirs(os.path.join(parent, name))
      return name
    except FileExistsError:
      continue


def plan(sweeps, make_config, experiments_dir=DEFAULT_EXPERIMENTS_DIR,
         summaries_root=None, command='', check_inputs=None):
  """The Experiment of the cross product of `sweeps`, the first slowest.

  `make_config(overrides)` returns the base RetrainSettings with the retrain
  flags in `overrides` ({flag: value text}) changed, raising PoetsError for a
  value a flag does not take. All configs are made before the experiment's
  folder, so a bad value stops the command before it writes anything; with
  `check_inputs` (pipeline.check_inputs), so does a missing image folder or
  module, as in retrain.py. `command` is the command line, kept with the
  results. Each run's summaries go to <summaries_root>/<experiment>/<run>,
  by default its own folder.
  """
  if not sweeps:
    raise PoetsError('Pass at least one --sweep key=value1,value2,... (e.g. '
                     '--sweep learning_rate=0.005,0.01,0.5,1.0).')
  keys = [sweep.key for sweep in sweeps]
  for key in keys:
    if keys.count(key) > 1:
      raise PoetsError(f'--sweep {key} is given twice; list all its values '
                       'in one.')
  summaries_root = summaries_root or experiments_dir
  files.check_writable(experiments_dir, '--experiments_dir')
  files.check_writable(summaries_root, '--summaries_dir')
  experiment_reports.check_index(experiments_dir)
  sweeps, notes = _without_missing_gpu(sweeps)
  grid = []
  for combination in itertools.product(*(sweep.values for sweep in sweeps)):
    values = dict(zip(keys, combination))
    grid.append((values, make_config({key: value for key, value
                                      in values.items()
                                      if key not in SPECIAL_KEYS})))
  if check_inputs:
    _check_inputs((config for _, config in grid), check_inputs)
  now = datetime.datetime.now()
  name = _new_folder(experiments_dir,
                     f'{now:%Y-%m-%d_%H%M%S}_{"+".join(keys)}')
  directory = os.path.join(experiments_dir, name)
  summaries_dir = os.path.join(summaries_root, name)
  runs = []
  for values, config in grid:
    run_dir = os.path.join(directory, run_name(values))
    config = _per_run(config, run_dir,
                      os.path.join(summaries_dir, run_name(values)))
    runs.append(Run(values, config, run_dir, values.get(DEVICE, ''),
                    _images_per_class(values.get(IMAGES_PER_CLASS, 'all'))))
  experiment = Experiment(name, directory, summaries_dir, sweeps, runs,
                          f'{now:%Y-%m-%d %H:%M:%S}', command, notes)
  experiment_reports.write_manifest(experiment, None)
  experiment_reports.write_index(experiments_dir)
  return experiment
