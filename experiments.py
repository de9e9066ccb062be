r"""Runs the codelab's experiments: a set of retrains, one table.

Every retrain.py flag sets the base of all runs; each --sweep key=v1,v2,...
tries the listed values of one key, and several sweeps run their cross
product. The keys are retrain.py's flag names (learning_rate,
how_many_training_steps, train_batch_size, architecture, random_crop, ...)
plus images_per_class (N training images per class, or all; the test set
stays the same) and device (cpu, gpu). The lab's questions, all offline:

  # How do the learning rate and the number of steps change the result?
  python experiments.py --image_dir tf_files/flower_photos \
      --sweep learning_rate=0.005,0.01,0.5,1.0 --how_many_training_steps 500
  python experiments.py --sweep how_many_training_steps=500,4000

  # How many photos does it take?
  python experiments.py --sweep images_per_class=5,20,80,all

  # Which network? The default against the codelab's own MobileNet (it
  # ships) and a larger EfficientNet; other mobilenet_* and inception_v3
  # download their archive once.
  python experiments.py \
      --sweep architecture=efficientnet_lite0,mobilenet_0.25_224,efficientnet_lite2

  # How much faster is a GPU? (Without one, says once what it would measure.)
  python experiments.py --sweep device=cpu,gpu

Each command is an experiment with a folder of its own,
<experiments_dir>/<date>_<time>_<keys>/, so nothing an earlier one wrote is
overwritten. In it: results.md (the command, the table, the plots; the table
is also printed), results.csv, accuracy_and_time_by_<key>.png (test accuracy
with its 95% interval, and each run's time split into making bottlenecks,
training and the rest), validation_accuracy.png, and a folder per run with its
graph, labels, retrain.log (everything the run printed, as retrain.py prints
it), and its test set's confusion_matrix.png and misclassified.jpg
(TensorBoard's Images, as files). <experiments_dir>/index.md lists every
experiment. All runs share --bottleneck_dir, so only the first run of a
network makes bottlenecks. Each run's TensorBoard summaries go in its own
folder (or, with --summaries_dir, to <summaries_dir>/<experiment>/<run>/), out
of the tf_files/training_summaries that the codelab's TensorBoard shows, so

  tensorboard --logdir tf_files/experiments/<experiment>

overlays one experiment's curves, and its HParams tab lists every run with
its swept values and final test accuracy, cross entropy and time.
"""

import shlex
import sys

from absl import app
from absl import flags
from absl import logging

import retrain  # Defines the retrain flags: the base of every run.
from poets import cli
from poets import interrupts
from poets import startup
from poets.errors import PoetsError
from poets.extras import experiment_plan

flags.DEFINE_multi_string(
    'sweep', [], 'key=value1,value2,...: runs every value of a retrain flag, '
    'of images_per_class (a number or all) or of device (cpu, gpu); several '
    '--sweep flags run the cross product.')
flags.DEFINE_string(
    'experiments_dir', experiment_plan.DEFAULT_EXPERIMENTS_DIR,
    'Where each experiment gets a folder for its table, '
    'plots and runs, listed in index.md.')
flags.register_validator('experiments_dir', cli.is_path,
                         'must name a folder (not empty, no NUL)')
flags.adopt_module_key_flags(retrain)

FLAGS = flags.FLAGS


def config_for(overrides):
  """retrain.py's settings with the flags in `overrides` set to other values,
  checked by the same bounds and validators as on the command line."""
  saved = {name: FLAGS[name].value for name in overrides}
  try:
    for name, text in overrides.items():
      FLAGS[name].parse(text)
    FLAGS.validate_all_flags()
    return retrain.settings_from_flags()
  except flags.IllegalFlagValueError as e:
    raise PoetsError(f'--sweep: {e}') from e
  finally:
    for name, value in saved.items():
      FLAGS[name].value = value


def main(argv):
  cli.refuse_positional(argv, 'experiments.py')
  startup.begin_script()  # Before anything imports TensorFlow.
  # pylint: disable=g-import-not-at-top
  from poets import pipeline
  from poets.extras import dashboards
  from poets.extras import experiment_reports
  from poets.extras import experiment_runs
  verbosity = cli.absl_verbosity(FLAGS.logging_verbosity)
  logging.set_verbosity(verbosity)
  flag_names = [flag.name
                for flag in FLAGS.get_key_flags_for_module(retrain)]
  try:
    with cli.one_line_errors():
      sweeps = [experiment_plan.parse_sweep(text, flag_names)
                for text in FLAGS.sweep]
      experiment = experiment_plan.plan(sweeps, config_for,
                                        FLAGS.experiments_dir,
                                        FLAGS.summaries_dir or None,
                                        shlex.join(['python'] + sys.argv),
                                        check_inputs=pipeline.check_inputs)
      for note in experiment.notes:
        print(note)
      # From here on Ctrl-C and SIGTERM stop the sweep, never the table:
      # each goes on to the run in progress, which saves what it trained.
      with interrupts.StopSignals(pass_on=True) as stop:
        outcomes = experiment_runs.run_all(experiment.runs, verbosity, stop)
        report = experiment_reports.write_report(outcomes, experiment)
        dashboards.write_hparams(experiment, outcomes)
  except KeyboardInterrupt:
    sys.exit('Interrupted before the first run; no table written.')
  print(report.markdown)
  print('Wrote ' + ', '.join(report.files))
  print(f'Curves: tensorboard --logdir {experiment.summaries_dir}')
  failed = [o for o in outcomes if o.status == 'failed']
  if stop.received:
    print(f'Interrupted after {len(outcomes)} of {len(experiment.runs)} runs; '
          'the table holds those.', file=sys.stderr)
    sys.exit(stop.exit_code)
  if failed:
    sys.exit(f'ERROR: {len(failed)} of {len(experiment.runs)} runs failed; '
             f'see their logs: {", ".join(o.run.log_path for o in failed)}')


if __name__ == '__main__':
  app.run(main, flags_parser=cli.parse_flags_or_exit)
