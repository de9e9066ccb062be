"""The flags of retrain.py: the original's contract, and checks at the door.

In-process: retrain.py's flags are parsed exactly as on the command line
(absl's FLAGS, retrain's bounds and validators, cli.parse_flags_or_exit), so
each case costs microseconds instead of a TensorFlow start-up.
"""

import math
import os
import subprocess
import sys

from absl import flags
import hypothesis
from hypothesis import HealthCheck, given, strategies as st
import pytest

from conftest import make_image_dir
from poets import pipeline
from poets import settings
from poets.errors import PoetsError
import retrain

FLAGS = flags.FLAGS
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# The codelab's scripts/retrain.py (googlecodelabs/tensorflow-for-poets-2):
# all 23 of its flags with its defaults, as its argparse lines read.
ORIGINAL_FLAGS = {
    'image_dir': '',
    'output_graph': '/tmp/output_graph.pb',
    'intermediate_output_graphs_dir': '/tmp/intermediate_graph/',
    'intermediate_store_frequency': 0,
    'output_labels': '/tmp/output_labels.txt',
    'summaries_dir': '/tmp/retrain_logs',
    'how_many_training_steps': 4000,
    'learning_rate': 0.01,
    'testing_percentage': 10,
    'validation_percentage': 10,
    'eval_step_interval': 10,
    'train_batch_size': 100,
    'test_batch_size': -1,
    'validation_batch_size': 100,
    'print_misclassified_test_images': False,
    'model_dir': '/tmp/imagenet',
    'bottleneck_dir': '/tmp/bottleneck',
    'final_tensor_name': 'final_result',
    'flip_left_right': False,
    'random_crop': 0,
    'random_scale': 0,
    'random_brightness': 0,
    'architecture': 'inception_v3',
}
# Where our default differs, and why (the README says so too): outputs go
# into the codelab's tf_files/ layout instead of /tmp, the shipped photos are
# found without a flag, and the default network is built offline.
CHANGED_DEFAULTS = {
    'image_dir': 'tf_files/flower_photos',  # The shipped photos.
    'output_graph': 'tf_files/retrained_graph.pb',
    'intermediate_output_graphs_dir': 'tf_files/intermediate_graph',
    'output_labels': 'tf_files/retrained_labels.txt',
    'summaries_dir': '',  # tf_files/training_summaries/<module name>
    'model_dir': 'tf_files/models',
    'bottleneck_dir': 'tf_files/bottlenecks',
    'architecture': '',  # efficientnet_lite0, offline; see the README.
}
# The hub retrain.py's additions, and ours.
LATER_FLAGS = {
    'tfhub_module': '', 'saved_model_dir': '',
    'checkpoint_path': 'tf_files/_retrain_checkpoint',
    'logging_verbosity': 'INFO', 'random_seed': None, 'input_height': 0,
    'input_width': 0, 'output_tflite': '', 'tflite_quantization': 'none',
}


def parse(*args):
  """Parses retrain.py's command line; returns its settings or exits 2."""
  FLAGS.unparse_flags()
  retrain.cli.parse_flags_or_exit(['retrain.py', *args])
  return retrain.settings_from_flags()


@pytest.fixture(autouse=True)
def fresh_flags():
  yield
  FLAGS.unparse_flags()


def refused(capsys, *args):
  """The one ERROR line a refused command line prints (exit code 2)."""
  with pytest.raises(SystemExit) as exit_info:
    parse(*args)
  assert exit_info.value.code == 2
  lines = capsys.readouterr().err.splitlines()
  assert len(lines) == 1 and lines[0].startswith('ERROR: '), lines
  return lines[0]


def test_every_original_flag_exists_with_its_default():
  """The original's default, except the paths and the network (above); the
  numbers, switches and names are the original's exactly."""
  assert len(ORIGINAL_FLAGS) == 23
  assert set(CHANGED_DEFAULTS) <= set(ORIGINAL_FLAGS)
  ours = {**ORIGINAL_FLAGS, **CHANGED_DEFAULTS, **LATER_FLAGS}
  for name, default in ours.items():
    assert name in FLAGS, name
    assert FLAGS[name].default == default, name
  for name in set(ORIGINAL_FLAGS) - set(CHANGED_DEFAULTS):
    assert type(FLAGS[name].default) is type(ORIGINAL_FLAGS[name]) or (
        isinstance(ORIGINAL_FLAGS[name], int) and
        isinstance(FLAGS[name].default, float)), name


def test_no_flag_gives_the_default_settings():
  """What the flags' defaults reach is what the code's defaults say."""
  assert parse() == settings.RetrainSettings()


def test_the_originals_spellings_parse():
  """argparse's `--flag value` and bare switches, as the codelab typed them."""
  parsed = parse('--how_many_training_steps', '500', '--flip_left_right',
                 '--print_misclassified_test_images', '--testing_percentage',
                 '15', '--test_batch_size', '7', '--validation_batch_size',
                 '9')
  assert (parsed.how_many_training_steps, parsed.flip_left_right,
          parsed.print_misclassified_test_images, parsed.testing_percentage,
          parsed.test_batch_size, parsed.validation_batch_size) == (
              500, True, True, 15, 7, 9)


def _distinct_value(name, index):
  """A value for flag `name`, valid and different from every other flag's."""
  default = settings.RetrainSettings().__getattribute__(name)
  if isinstance(default, bool):
    return not default
  if name in ('testing_percentage', 'validation_percentage'):
    return {'testing_percentage': 11.5, 'validation_percentage': 12.5}[name]
  if name == 'architecture':
    return ''  # Exclusive with tfhub_module, which gets the value.
  if name == 'final_tensor_name':
    return 'scores'
  if name == 'tflite_quantization':
    return 'int8'
  if isinstance(default, (int, float)) or default is None:
    if name in ('random_crop', 'random_scale', 'random_brightness'):
      return 10 + index
    return 20 + index
  return f'path_{name}'


def test_every_flag_reaches_the_setting_of_its_name():
  """Each flag set to its own value lands in the field of its name, so a
  swap (say --test_batch_size into validation_batch_size) is caught."""
  names = [name for name in settings.field_names() if name in FLAGS]
  assert set(ORIGINAL_FLAGS) | set(LATER_FLAGS) - {'logging_verbosity'} <= (
      set(names))
  values = {name: _distinct_value(name, i) for i, name in enumerate(names)}
  values['learning_rate'] = 0.25
  args = []
  for name, value in values.items():
    if isinstance(value, bool):
      args.append(f'--{"" if value else "no"}{name}')
    else:
      args.append(f'--{name}={value}')
  parsed = parse(*args)
  for name, value in values.items():
    assert getattr(parsed, name) == value, name


@pytest.mark.parametrize('arg, named', [
    ('--how_many_training_steps=-5', '--how_many_training_steps=-5'),
    ('--learning_rate=-0.1', '--learning_rate=-0.1'),
    ('--learning_rate=nan', '--learning_rate=nan'),
    ('--learning_rate=inf', '--learning_rate=inf'),
    ('--eval_step_interval=0', '--eval_step_interval=0'),
    ('--train_batch_size=0', '--train_batch_size=0'),
    ('--train_batch_size=-1', '--train_batch_size=-1'),
    ('--train_batch_size=1000000000', '--train_batch_size=1000000000'),
    ('--validation_batch_size=0', '--validation_batch_size=0'),
    ('--test_batch_size=-2', '--test_batch_size=-2'),
    ('--testing_percentage=150', '--testing_percentage=150'),
    ('--validation_percentage=-1', '--validation_percentage=-1'),
    ('--random_seed=-1', '--random_seed=-1'),
    ('--random_crop=-10', '--random_crop=-10'),
    ('--random_brightness=101', '--random_brightness=101'),
    ('--intermediate_store_frequency=-1',
     '--intermediate_store_frequency=-1'),
    ('--input_height=-3', '--input_height=-3'),
    ('--final_tensor_name=', '--final_tensor_name='),
    ('--final_tensor_name=my result', '--final_tensor_name=my result'),
    ('--final_tensor_name=input', '--final_tensor_name=input'),
    ('--output_graph=', '--output_graph='),
    ('--image_dir=', '--image_dir='),
    ('--how_many_training_steps=many', '--how_many_training_steps=many'),
    ('--tflite_quantization=float16', '--tflite_quantization=float16'),
    ('--architecture=mobilenet_2.0_224', '--architecture=mobilenet_2.0_224'),
])
def test_a_bad_value_is_one_line_naming_flag_and_value(capsys, arg, named):
  line = refused(capsys, arg)
  assert named in line


@pytest.mark.parametrize('args, says', [
    (['--testing_percentage=60', '--validation_percentage=40'],
     'no image is left for training'),
    (['--input_height=224'], 'pass both or neither'),
    (['--architecture=efficientnet_lite0', '--tfhub_module=x'], 'not both'),
    (['--tflite_quantization=int8'], 'needs --output_tflite'),
])
def test_flags_that_only_fail_together_are_named_together(capsys, args, says):
  line = refused(capsys, *args)
  assert says in line
  for arg in args:
    assert arg.split('=')[0].lstrip('-') in line


def test_allowed_but_useless_values_warn():
  parsed = parse('--learning_rate=0', '--how_many_training_steps=0')
  found = settings.warnings(parsed)
  assert any('--learning_rate=0' in w for w in found)
  assert any('--how_many_training_steps=0' in w for w in found)
  assert settings.warnings(parse()) == []


def test_the_script_exits_2_with_one_line(tmp_path):
  """The process boundary: exit code 2 and nothing but the ERROR line on
  stderr: not absl's 'FATAL Flags parsing error' and --helpfull hint, not
  TensorFlow's start-up lines (poets/startup.py)."""
  process = subprocess.run(
      [sys.executable, os.path.join(ROOT, 'retrain.py'),
       '--train_batch_size=0'], cwd=tmp_path, capture_output=True, text=True,
      timeout=120)
  assert process.returncode == 2
  assert process.stdout == ''
  assert process.stderr == ('ERROR: flag --train_batch_size=0: 0 is not an '
                            'integer in the range [1, 100000]\n')


def test_diverging_training_stops_with_a_hint(tmp_path, tf2_module):
  image_dir = make_image_dir(tmp_path / 'photos', per_class=10)
  run_settings = parse(
      f'--image_dir={image_dir}', f'--tfhub_module={tf2_module}',
      f'--bottleneck_dir={tmp_path / "b"}', f'--model_dir={tmp_path / "m"}',
      f'--output_graph={tmp_path / "g.pb"}',
      f'--output_labels={tmp_path / "l.txt"}',
      f'--summaries_dir={tmp_path / "s"}',
      f'--checkpoint_path={tmp_path / "c" / "x"}',
      '--learning_rate=1e38', '--how_many_training_steps=30')
  with pytest.raises(PoetsError, match=r'diverged .* smaller --learning_rate'):
    pipeline.run(run_settings)
  assert not (tmp_path / 'g.pb').exists()


def _flag_value():
  """Any text a user could type after `--flag=`, numbers favoured."""
  return st.one_of(
      st.integers(min_value=-2**70, max_value=2**70).map(str),
      st.sampled_from(['-1', '0', '1', '100', '101', '-0', '1e309', 'nan',
                       '-inf', '2147483647', '2147483648', '99.99']),
      st.floats(allow_nan=True, allow_infinity=True).map(repr),
      st.text(max_size=12))


@hypothesis.settings(max_examples=400, deadline=None)
@given(values=st.dictionaries(
    st.sampled_from([name for name in settings.field_names()
                     if name in FLAGS and not isinstance(
                         getattr(settings.RetrainSettings(), name), bool)]),
    _flag_value(), max_size=6))
def test_any_value_is_accepted_and_sane_or_refused_in_one_line(values):
  """Arbitrary values for every numeric and string flag: each command line
  is refused with one ERROR line naming a flag, or gives settings that a
  run can use."""
  args = [f'--{name}={value}' for name, value in values.items()]
  FLAGS.unparse_flags()
  try:
    FLAGS(['retrain.py', *args])
  except flags.Error as e:
    message = ' '.join(str(e).split())
    assert any(name in message for name in values), message
    return
  parsed = retrain.settings_from_flags()
  assert parsed.how_many_training_steps >= 0
  assert parsed.eval_step_interval >= 1
  assert 1 <= parsed.train_batch_size <= retrain.MAX_BATCH_SIZE
  for size in (parsed.test_batch_size, parsed.validation_batch_size):
    assert size == -1 or 1 <= size <= retrain.MAX_BATCH_SIZE
  assert math.isfinite(parsed.learning_rate) and parsed.learning_rate >= 0
  assert 0 <= parsed.testing_percentage
  assert 0 <= parsed.validation_percentage
  assert parsed.testing_percentage + parsed.validation_percentage < 100
  for percent in (parsed.random_crop, parsed.random_scale,
                  parsed.random_brightness):
    assert 0 <= percent <= 100
  assert parsed.random_seed is None or 0 <= parsed.random_seed < 2**31
  assert (parsed.input_height == 0) == (parsed.input_width == 0)
  assert settings.is_valid_final_tensor_name(parsed.final_tensor_name)
  for path in (parsed.image_dir, parsed.output_graph, parsed.output_labels,
               parsed.bottleneck_dir, parsed.checkpoint_path,
               parsed.model_dir, parsed.intermediate_output_graphs_dir):
    assert path and '\0' not in path


@hypothesis.settings(
    max_examples=12, deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture,
                           HealthCheck.too_slow])
@given(values=st.fixed_dictionaries({}, optional={
    'how_many_training_steps': st.integers(-3, 25),
    'learning_rate': st.one_of(st.floats(-1, 1e6), st.just(1e30)),
    'testing_percentage': st.floats(-5, 105),
    'validation_percentage': st.floats(-5, 105),
    'eval_step_interval': st.integers(-1, 2**40),
    # Distorted batches decode every image of every step: kept small.
    'train_batch_size': st.integers(-2, 300),
    'test_batch_size': st.integers(-3, 5000),
    'validation_batch_size': st.integers(-3, 5000),
    'intermediate_store_frequency': st.integers(-2, 30),
    'random_seed': st.integers(-5, 2**32),
    'random_crop': st.integers(-5, 120),
    'random_brightness': st.integers(-5, 120),
    'final_tensor_name': st.text(
        alphabet='ab_.-/ 0', min_size=0, max_size=6),
}))
def test_accepted_values_make_a_sane_run(values, tmp_path_factory,
                                         tf2_module, capsys):
  """In-process runs on three colour classes with the tiny module: a value
  retrain.py accepts gives a run that exports a graph (or one PoetsError
  line, e.g. a diverged learning rate); never another exception."""
  root = tmp_path_factory.mktemp('run')
  image_dir = make_image_dir(root / 'photos', per_class=6)
  # Few steps unless drawn (the original's 4,000 would dominate the suite);
  # a later flag overrides an earlier one.
  args = ['--how_many_training_steps=5'] + [
      f'--{name}={value}' for name, value in values.items()] + [
      f'--image_dir={image_dir}', f'--tfhub_module={tf2_module}',
      f'--bottleneck_dir={root / "b"}', f'--model_dir={root / "m"}',
      f'--output_graph={root / "g.pb"}', f'--output_labels={root / "l.txt"}',
      f'--summaries_dir={root / "s"}',
      f'--intermediate_output_graphs_dir={root / "i"}',
      f'--checkpoint_path={root / "c" / "x"}']
  capsys.readouterr()  # What earlier examples printed.
  try:
    run_settings = parse(*args)
  except SystemExit as e:
    assert e.code == 2
    assert capsys.readouterr().err.startswith('ERROR: ')
    return
  try:
    result = pipeline.run(run_settings)
  except PoetsError as e:
    assert '\n' not in str(e)
    return
  assert (root / 'g.pb').stat().st_size > 0
  assert (root / 'l.txt').read_text().split() == ['blue', 'green', 'red']
  assert result.training.steps_done == run_settings.how_many_training_steps
  if result.training.test is not None:
    assert 0 <= result.training.test.accuracy <= 1


def test_label_image_refuses_a_zero_std_at_the_door(tmp_path):
  """label_image.py's flags are checked like retrain.py's, and its stderr is
  as clean (its flags share names with retrain.py's, so it runs as a
  process)."""
  process = subprocess.run(
      [sys.executable, os.path.join(ROOT, 'label_image.py'),
       '--input_std=0', '--image=x.jpg'], cwd=tmp_path, capture_output=True,
      text=True, timeout=120)
  assert process.returncode == 2
  assert process.stdout == ''
  assert process.stderr == ('ERROR: flag --input_std=0.0: must be a '
                            'positive finite number\n')
