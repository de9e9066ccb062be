"""What an experiment leaves behind: its table, plots, manifest and the index.

poets.extras.experiment_runs runs the grid; here its Outcomes become
results.md (the command, the table and the plots), results.csv (every
measure, unrounded), one accuracy-and-time figure per swept key and the
validation curves, all in the experiment's own folder. Each experiment also
keeps a small manifest, experiment.json, from which index.md beside the
folders lists them all, finished or not.
"""

import csv
import dataclasses
import io
import json
import math
import os
import re

from matplotlib.figure import Figure
from matplotlib.patches import Patch
import numpy as np

from poets import errors
from poets import files
from poets.errors import PoetsError

CURVES_NAME = 'validation_accuracy.png'
TABLE_NAME = 'results.md'
CSV_NAME = 'results.csv'
MANIFEST_NAME = 'experiment.json'
INDEX_NAME = 'index.md'
# How the index starts: an index.md that does not was not written here.
INDEX_HEADING = '# Experiments\n\nEvery experiments.py command'
WRITTEN_BY = 'experiments.py'
_MANIFEST_KEYS = {'name', 'started', 'swept', 'runs', 'finished'}
# A failed run's table cell; the whole message stays in its log and the CSV.
REASON_LENGTH = 60


@dataclasses.dataclass
class Report:
  markdown: str  # the table
  files: list[str]


def wilson_interval(correct, count, z=1.96):
  """The 95% Wilson score interval of `correct` out of `count`, as fractions.

  On 58 test images one image is 1.7 points, and the interval is about
  +-8 points: two runs whose intervals overlap are not told apart by the
  test set. Wilson's interval, unlike p +- z*sqrt(p(1-p)/n), stays inside
  [0, 1] and is not zero wide at 100%.
  """
  share = correct / count
  scale = 1 + z * z / count
  centre = (share + z * z / (2 * count)) / scale
  half = z / scale * math.sqrt(share * (1 - share) / count +
                               z * z / (4 * count * count))
  return max(0.0, centre - half), min(1.0, centre + half)


def run_measures(outcome):
  """The numbers of a run that trained, by name; {} otherwise."""
  result = outcome.result
  if result is None:
    return {}
  steps = result.training.steps_done
  measures = {'steps': steps,
              'training_images': result.split_sizes['training'],
              'validation_images': result.split_sizes['validation'],
              'bottlenecks_created': result.cache.created,
              'bottleneck_seconds': result.bottleneck_seconds,
              'training_seconds': result.training_seconds,
              'other_seconds': max(0.0, outcome.seconds -
                                   result.bottleneck_seconds -
                                   result.training_seconds),
              'steps_per_second': steps / result.training_seconds,
              'run_seconds': outcome.seconds}
  test = result.training.test
  if test is not None:
    # Macro averages over the classes in the test set; a class never
    # predicted counts with precision 0.
    present = test.confusion.sum(axis=1) > 0
    low, high = wilson_interval(int(np.trace(test.confusion)), test.count)
    measures.update(test_accuracy=test.accuracy, accuracy_low=low,
                    accuracy_high=high,
                    precision=float(test.precision[present].mean()),
                    recall=float(test.recall[present].mean()),
                    test_images=test.count)
  return measures


# Markdown header and cell (from the measures); a cell whose measure is
# missing stays empty. The CSV has every measure, unrounded.
_TABLE = (
    ('test accuracy', '{test_accuracy:.1%}'),
    ('95% interval', '{accuracy_low:.0%}–{accuracy_high:.0%}'),
    ('precision', '{precision:.3f}'),
    ('recall', '{recall:.3f}'),
    ('training images', '{training_images}'),
    ('test images', '{test_images}'),
    ('steps', '{steps}'),
    ('bottlenecks made', '{bottlenecks_created}'),
    ('bottleneck s', '{bottleneck_seconds:.1f}'),
    ('training s', '{training_seconds:.1f}'),
    ('run s', '{run_seconds:.1f}'),
)
_CSV_MEASURES = ('test_accuracy', 'accuracy_low', 'accuracy_high',
                 'precision', 'recall', 'training_images',
                 'validation_images', 'test_images', 'steps',
                 'bottlenecks_created', 'bottleneck_seconds',
                 'training_seconds', 'other_seconds', 'steps_per_second',
                 'run_seconds')


def short_reason(message, length=REASON_LENGTH):
  """A message's first line, at most `length` characters, for a table cell."""
  text = ' '.join(errors.first_line(message).split())
  return text if len(text) <= length else text[:length - 1] + '…'


def _status_cell(outcome):
  return (f'{outcome.status}: {short_reason(outcome.message)}'
          if outcome.message else outcome.status)


def summary_line(outcome):
  """One line per finished run, for the terminal."""
  measures = run_measures(outcome)
  text = f'{outcome.run.name}: {outcome.status}'
  if outcome.message:
    text += f': {outcome.message}'
  if 'test_accuracy' in measures:
    text += f', test accuracy {measures["test_accuracy"]:.1%}'
  if measures:
    text += f', run {measures["run_seconds"]:.1f} s'
  if outcome.warnings:
    text += (f' ({outcome.warnings} warning' +
             ('s' if outcome.warnings != 1 else '') + ')')
  if outcome.status != 'ok' or outcome.warnings:
    text += f'; see {outcome.run.log_path}'
  return text


def _cell(template, measures):
  try:
    return template.format(**measures)
  except KeyError:
    return ''


def markdown_table(outcomes, keys):
  """Swept values, status and measures; numbers right-aligned."""
  header = list(keys) + ['status'] + [title for title, _ in _TABLE]
  lines = ['| ' + ' | '.join(header) + ' |',
           '|' + '---|' * (len(keys) + 1) + '---:|' * len(_TABLE)]
  for outcome in outcomes:
    measures = run_measures(outcome)
    cells = ([outcome.run.values[key] for key in keys] +
             [_status_cell(outcome)] +
             [_cell(template, measures) for _, template in _TABLE])
    lines.append('| ' + ' | '.join(cell.replace('|', r'\|') for cell in cells)
                 + ' |')
  return '\n'.join(lines) + '\n'


def csv_table(outcomes, keys):
  """The same rows with unrounded numbers (accuracies as fractions)."""
  out = io.StringIO()
  writer = csv.writer(out)
  writer.writerow(list(keys) + ['status', 'message'] + list(_CSV_MEASURES) +
                  ['run_dir'])
  for outcome in outcomes:
    measures = run_measures(outcome)
    writer.writerow([outcome.run.values[key] for key in keys] +
                    [outcome.status, outcome.message] +
                    [measures.get(name, '') for name in _CSV_MEASURES] +
                    [outcome.run.dir])
  return out.getvalue()


def curves_figure(outcomes):
  """Validation accuracy against step, one line per run; None if none."""
  curves = [(outcome.run.name, outcome.result.training.validation_curve)
            for outcome in outcomes
            if outcome.result and outcome.result.training.validation_curve]
  if not curves:
    return None
  figure = Figure(figsize=(9, 4.5), layout='constrained')
  axes = figure.subplots()
  for name, curve in curves:
    steps, accuracy = zip(*curve)
    axes.plot(steps, 100 * np.array(accuracy), label=name)
  axes.set(xlabel='training step', ylabel='validation accuracy (%)',
           title='Validation accuracy during training')
  axes.margins(y=0.08)
  axes.grid(alpha=0.3)
  axes.legend(fontsize='small')
  return figure


# The parts of a run's time, bottom to top of its bar.
_TIME_PARTS = (('bottleneck_seconds', 'making bottlenecks or the cut cache',
                'tab:orange'),
               ('training_seconds', 'training', 'tab:green'),
               ('other_seconds', 'start-up, loading, export', 'lightgrey'))
# Colours of the runs that share the other keys' values: none of the above.
_LINE_COLOURS = ('tab:blue', 'tab:purple', 'tab:brown', 'tab:pink',
                 'tab:olive', 'tab:cyan', 'tab:red', 'tab:gray')


def _mark_missing(axes, x, y, label):
  """An X and what became of the run, where its point or bar would be."""
  axes.plot([x], [y], 'x', color='tab:red', markersize=11, markeredgewidth=2.5)
  axes.annotate(label, (x, y), textcoords='offset points', xytext=(0, 9),
                ha='center', color='tab:red', fontsize='small')


def _missing_label(outcome):
  return outcome.status if outcome.status != 'ok' else 'no test images'


def _plot_accuracy(axes, placed):
  """Test accuracy with its 95% interval; an X for a run without one."""
  series, missing = {}, []
  for x, outcome, colour, label in placed:
    measures = run_measures(outcome)
    if 'test_accuracy' in measures:
      series.setdefault((label, colour), []).append((x, measures))
    else:
      missing.append((x, _missing_label(outcome)))
  limits = []
  for (label, colour), points in series.items():
    accuracy = np.array([100 * m['test_accuracy'] for _, m in points])
    low = np.array([100 * m['accuracy_low'] for _, m in points])
    high = np.array([100 * m['accuracy_high'] for _, m in points])
    # Clipped: TensorFlow's float32 accuracy may sit a hair outside.
    errors = np.maximum(0, [accuracy - low, high - accuracy])
    # Points without lines: runs are not a trend to read between them.
    axes.errorbar([x for x, _ in points], accuracy, yerr=errors, fmt='o',
                  color=colour, capsize=5, markersize=7, label=label or None)
    limits.extend(low.tolist() + high.tolist())
  # Fitted to the intervals, with room above 100% and below for the Xs.
  bottom, top = (min(limits), max(limits)) if limits else (0, 100)
  span = max(top - bottom, 10)
  floor, ceiling = bottom - (0.3 if missing else 0.08) * span, top + 0.08 * span
  axes.set_ylim(floor, ceiling)
  if missing:
    # A strip of its own without ticks, so an X is not read as an accuracy.
    strip = bottom - 0.1 * span
    axes.axhspan(floor, strip, color='0.93', zorder=0)
    axes.set_yticks([tick for tick in axes.get_yticks()
                     if strip <= tick <= ceiling])
    axes.set_ylim(floor, ceiling)
  for x, label in missing:
    _mark_missing(axes, x, bottom - 0.22 * span, label)
  counts = {run_measures(o).get('test_images')
            for _, o, _, _ in placed} - {None}
  counted = (f'{counts.pop()} test images' if len(counts) == 1
             else 'test images in the table')
  axes.set(ylabel='final test accuracy (%)',
           title=f'Test accuracy, 95% interval ({counted})')
  if series and any(label for label, _ in series):
    axes.legend(fontsize='small')


def _plot_time(axes, placed, width, outlined):
  """Each run's whole time as a bar stacked from its parts; X if none."""
  totals = [run_measures(o)['run_seconds'] for _, o, _, _ in placed
            if run_measures(o)]
  tallest = max(totals + [1.0])
  series = {}
  for x, outcome, colour, label in placed:
    measures = run_measures(outcome)
    if not measures:
      _mark_missing(axes, x, 0.05 * tallest, outcome.status)
      continue
    base = 0.0
    for name, _, fill in _TIME_PARTS:
      axes.bar(x, measures[name], width * 0.9, bottom=base, color=fill)
      base += measures[name]
    if outlined:
      axes.bar(x, base, width * 0.9, fill=False, edgecolor=colour,
               linewidth=2)
      series[label] = colour
    axes.annotate(f'{base:.1f} s', (x, base), textcoords='offset points',
                  xytext=(0, 3), ha='center', fontsize='small')
  handles = [Patch(color=fill, label=part)
             for _, part, fill in reversed(_TIME_PARTS)]
  handles += [Patch(fill=False, edgecolor=colour, linewidth=2, label=label)
              for label, colour in series.items()]
  # Two columns: three of these labels side by side are wider than the plot.
  rows = math.ceil(len(handles) / 2)
  # Headroom for the totals and the legend, which sits above the bars.
  axes.set_ylim(0, (1.2 + 0.1 * rows) * tallest)
  axes.legend(handles=handles, fontsize='small', loc='upper center', ncol=2)
  axes.set(ylabel='time per run (s)', title='Run time: where it goes')


# Characters of a tick label's line before it is broken after '_', ',' or '/'.
TICK_LINE_LENGTH = 14


def tick_label(value):
  """A swept value as an x tick label: long ones broken after '_', ',' or '/'
  into lines, so that neighbours need less room."""
  lines = ['']
  for part in re.split(r'(?<=[_,/])', value):
    if lines[-1] and len(lines[-1]) + len(part) > TICK_LINE_LENGTH:
      lines.append('')
    lines[-1] += part
  return '\n'.join(lines)


def _widen_until_ticks_fit(figure, axes_list):
  """Widens the figure until no x tick label runs into its neighbour."""
  for _ in range(5):
    figure.draw_without_rendering()
    needed = 1.0
    for axes in axes_list:
      boxes = [label.get_window_extent() for label in axes.get_xticklabels()
               if label.get_text()]
      for left, right in zip(boxes, boxes[1:]):
        gap = right.x0 - left.x1
        if gap < 0:
          spacing = (right.x0 + right.x1 - left.x0 - left.x1) / 2
          needed = max(needed, (spacing - gap + 6) / spacing)
    if needed == 1.0:
      return
    figure.set_figwidth(figure.get_figwidth() * needed)


def by_key_figure(outcomes, keys, key):
  """Test accuracy (95% intervals) and run time, split, by one key.

  Values in sweep order, evenly spaced (they may be words); the runs that
  share the other keys' values are one series, side by side at each value.
  A run with no result is an X labelled with what became of it.
  """
  values = list(dict.fromkeys(outcome.run.values[key] for outcome in outcomes))
  others = [other for other in keys if other != key]
  series = {}
  for outcome in outcomes:
    label = ','.join(f'{other}={outcome.run.values[other]}'
                     for other in others)
    series.setdefault(label, []).append(outcome)
  width = 0.8 / len(series)
  placed = []  # (x, outcome, colour, series label)
  for index, (label, members) in enumerate(series.items()):
    colour = _LINE_COLOURS[index % len(_LINE_COLOURS)]
    offset = (index - (len(series) - 1) / 2) * width
    placed.extend((values.index(outcome.run.values[key]) + offset, outcome,
                   colour, label) for outcome in members)
  figure = Figure(figsize=(12, 4.8), layout='constrained')
  accuracy_axes, time_axes = figure.subplots(1, 2)
  _plot_accuracy(accuracy_axes, placed)
  _plot_time(time_axes, placed, width, outlined=len(series) > 1)
  for axes in (accuracy_axes, time_axes):
    axes.set_xticks(range(len(values)), [tick_label(v) for v in values])
    axes.set_xlim(-0.6, len(values) - 0.4)
    axes.set_xlabel(key)
    axes.grid(alpha=0.3, axis='y')
  figure.suptitle(f'By {key}: test accuracy and run time')
  _widen_until_ticks_fit(figure, (accuracy_axes, time_axes))
  return figure


def write_manifest(experiment, outcomes):
  """The experiment's summary for the index; outcomes None while it runs."""
  manifest = {'written_by': WRITTEN_BY,
              'name': experiment.name, 'started': experiment.started,
              'command': experiment.command,
              'swept': {sweep.key: list(sweep.values)
                        for sweep in experiment.sweeps},
              'runs': len(experiment.runs), 'finished': outcomes is not None}
  if outcomes is not None:
    measures = [run_measures(outcome) for outcome in outcomes]
    manifest['statuses'] = [outcome.status for outcome in outcomes]
    manifest['test_accuracies'] = [m['test_accuracy'] for m in measures
                                   if 'test_accuracy' in m]
  files.atomic_write(os.path.join(experiment.dir, MANIFEST_NAME),
                     json.dumps(manifest, indent=1) + '\n')


def _index_row(manifest):
  swept = '; '.join(f'{key}={",".join(values)}'
                    for key, values in manifest['swept'].items())
  if not manifest['finished']:
    runs, accuracy = f'{manifest["runs"]} planned, not finished', ''
  else:
    statuses = manifest['statuses']
    runs = ', '.join(f'{statuses.count(status)} {status}'
                     for status in dict.fromkeys(statuses))
    if len(statuses) < manifest['runs']:
      runs += f' (of {manifest["runs"]})'
    accuracies = manifest['test_accuracies']
    accuracy = (f'{min(accuracies):.1%}–{max(accuracies):.1%}'
                if accuracies else '')
  cells = [manifest['started'], swept, runs, accuracy,
           f'[{manifest["name"]}]({manifest["name"]}/{TABLE_NAME})']
  return '| ' + ' | '.join(cell.replace('|', r'\|') for cell in cells) + ' |'


def _read_manifest(path):
  """The manifest experiments.py wrote at `path`, or None for any other
  file of that name, or none (the index lists only experiments it ran)."""
  try:
    with open(path, encoding='utf-8') as f:
      manifest = json.load(f)
  except (OSError, ValueError):
    return None
  if (isinstance(manifest, dict) and _MANIFEST_KEYS <= set(manifest) and
      manifest.get('written_by', WRITTEN_BY) == WRITTEN_BY):
    return manifest
  return None


def check_index(experiments_dir):
  """Refuses an --experiments_dir whose index.md experiments.py did not
  write: every experiment rewrites it."""
  path = os.path.join(experiments_dir, INDEX_NAME)
  if not os.path.lexists(path):
    return
  try:
    with open(path, encoding='utf-8') as f:
      ours = f.read(len(INDEX_HEADING)) == INDEX_HEADING
  except (OSError, UnicodeDecodeError):
    ours = False
  if not ours or os.path.islink(path):
    raise PoetsError(f'--experiments_dir {experiments_dir} holds an '
                     f'{INDEX_NAME} that experiments.py did not write, and '
                     'each experiment rewrites it; choose another '
                     '--experiments_dir or move it away.')


def write_index(experiments_dir):
  """Rewrites <experiments_dir>/index.md: every experiment there, oldest first.

  Made from each experiment folder's manifest, so it lists them all however
  many commands ran, and one that was killed shows as not finished.
  """
  check_index(experiments_dir)
  rows = []
  for name in sorted(os.listdir(experiments_dir)):
    manifest = _read_manifest(os.path.join(experiments_dir, name,
                                           MANIFEST_NAME))
    if manifest is None:
      continue
    try:
      rows.append(_index_row(manifest))
    except (AttributeError, KeyError, TypeError, ValueError):
      continue  # Its keys, but not the values this script writes.
  text = (INDEX_HEADING + ' run here, oldest '
          'first. Each folder holds its table (results.md, results.csv), its '
          'plots and a folder per run with the run\'s retrain.log.\n\n'
          '| started | swept | runs | test accuracy (lowest–highest) | '
          'results |\n|---|---|---|---|---|\n' + '\n'.join(rows) + '\n')
  path = os.path.join(experiments_dir, INDEX_NAME)
  files.atomic_write(path, text)
  return path


def _results_page(experiment, outcomes, table, plots):
  """results.md: what was run, what was said, the table, each run's
  pictures of its mistakes and the plots."""
  parts = [f'# {", ".join(experiment.keys)}, {experiment.started}\n']
  if experiment.command:
    parts.append(f'```\n{experiment.command}\n```\n')
  parts.extend(f'{note}\n' for note in experiment.notes)
  parts.append(table)
  parts.append('Test accuracy is on the test images counted in the table; '
               'the 95% interval (Wilson) is how far the true accuracy may '
               'lie from it. Each run\'s full log is in its folder, '
               'the CSV\'s run_dir.\n')
  pictured = [outcome for outcome in outcomes if outcome.pictures]
  if pictured:
    parts.append('Where each run went wrong on the test images (also in '
                 'TensorBoard\'s Images tab):\n\n' + ''.join(
                     f'- {outcome.run.name}: ' + ', '.join(
                         f'[{os.path.basename(path)}]'
                         f'({os.path.relpath(path, experiment.dir)})'
                         for path in outcome.pictures) + '\n'
                     for outcome in pictured))
  parts.extend(f'![{os.path.splitext(plot)[0]}]({plot})\n' for plot in plots)
  return '\n'.join(parts)


def write_report(outcomes, experiment):
  """Writes the experiment's table, CSV, plots and manifest, and the index.

  Everything goes in the experiment's own folder; only the index beside it
  is rewritten. Returns a Report.
  """
  table = markdown_table(outcomes, experiment.keys)
  figures = {f'accuracy_and_time_by_{key}.png':
             by_key_figure(outcomes, experiment.keys, key)
             for key in experiment.keys}
  figures[CURVES_NAME] = curves_figure(outcomes)
  plots = [name for name, figure in figures.items() if figure is not None]
  for name in plots:
    figures[name].savefig(os.path.join(experiment.dir, name), dpi=100)
  files.atomic_write(os.path.join(experiment.dir, TABLE_NAME),
                     _results_page(experiment, outcomes, table,
                                   plots))
  files.atomic_write(os.path.join(experiment.dir, CSV_NAME),
                     csv_table(outcomes, experiment.keys))
  write_manifest(experiment, outcomes)
  index = write_index(os.path.dirname(experiment.dir))
  written = [os.path.join(experiment.dir, name)
             for name in [TABLE_NAME, CSV_NAME] + plots] + [index]
  return Report(table, written)
