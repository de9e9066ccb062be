"""TensorBoard's pictures of a run: Projector, Images, PR curves, Text, HParams.

Training writes the scalars and histograms and export the graph. At the end
of a run `write_run` adds, beside them in --summaries_dir:

- `bottlenecks/`: the Projector's points. The bottleneck of every validation
  and test photo and of a sample of at most TRAINING_POINTS training photos
  (EVALUATION_POINTS at most of each evaluation split), with each photo's
  label, split and file name, and its thumbnail in a sprite; with
  --fine_tune_blocks, beside them the fine-tuned network's features of the
  same photos.
- `test/`: the confusion matrix and the misclassified test photos as images,
  one precision-recall curve per class, and the run's settings and network
  as tables (Text).

experiments.py adds HParams with `write_hparams`: each run's swept values and
final metrics, so the runs of a sweep line up in one sortable table; and
with `write_pictures` the test set's images as files in each run's folder.

Nothing here is needed to label images. It uses what the run holds in memory
and decodes only the thumbnails.
"""

import concurrent.futures
import dataclasses
import hashlib
import io
import math
import os

from google.protobuf import text_format
from matplotlib import font_manager
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
import numpy as np
from PIL import Image
from PIL import ImageDraw
from PIL import ImageFont
from PIL import ImageOps
from tensorboard.plugins.hparams import api_pb2
from tensorboard.plugins.hparams import summary as hparams_summary
from tensorboard.plugins.image import metadata as image_metadata
from tensorboard.plugins.pr_curve import summary as pr_curve_summary
from tensorboard.plugins.projector import projector_config_pb2
from tensorboard.plugins.text import summary as text_summary
import tensorflow as tf

from poets import files
from poets.core import fine_tuning
from poets.core import summary_ops
from poets.settings import RetrainSettings

TEST_RUN = 'test'
PROJECTOR_RUN = 'bottlenecks'
RUN_FOLDERS = (TEST_RUN, PROJECTOR_RUN)
TRAINING_POINTS = 500  # training photos in the Projector, at most
EVALUATION_POINTS = 2000  # validation photos, and test photos, at most
THUMBNAIL_SIZE = 64  # pixels a side in the Projector's sprite
MISCLASSIFIED_SHOWN = 16  # the most confident mistakes, two a row
MISCLASSIFIED_SIZE = 160  # pixels a side of each photo there
PROJECTOR_CONFIG = 'projector_config.pbtxt'  # the name the Projector reads
# The Projector's embeddings: the pretrained network's features, and with
# --fine_tune_blocks the fine-tuned network's, of the same photos.
PRETRAINED = 'bottlenecks'
FINE_TUNED = 'fine_tuned_bottlenecks'
METADATA = 'metadata.tsv'
SPRITE = 'sprite.jpg'
# In --bottleneck_dir: each set of photos' sprite, so a run on the same photos
# copies it instead of decoding them all again.
SPRITE_CACHE = '.sprites'
# Each split the Projector shows, by the image lists' name, and its cap.
_SPLITS = (('validation', EVALUATION_POINTS), ('testing', EVALUATION_POINTS),
           ('training', TRAINING_POINTS))


@dataclasses.dataclass
class ProjectorSample:
  """The photos the Projector shows, one point each, in split order."""
  rows: dict  # split name -> int indices into that split's bottlenecks
  labels: list[str]  # of each point
  splits: list[str]
  filenames: list[str]

  def __len__(self):
    return len(self.filenames)

  def features(self, splits):
    """Each point's bottleneck (float32 [points, size]) from `splits`."""
    return np.concatenate([splits[name].bottlenecks[rows]
                           for name, rows in self.rows.items()])


def projector_sample(splits, labels):
  """All validation and test photos and a sample of the training photos,
  each split drawn at random beyond its cap, the same draw in every run (so
  the sprite of the photos is made once)."""
  rng = np.random.default_rng(0)
  sample = ProjectorSample({}, [], [], [])
  for name, cap in _SPLITS:
    split = splits[name]
    count = len(split.ground_truth)
    rows = (np.arange(count) if count <= cap else
            np.sort(rng.choice(count, cap, replace=False)))
    sample.rows[name] = rows
    sample.labels += [labels[split.ground_truth[row]] for row in rows]
    sample.splits += [name] * len(rows)
    sample.filenames += [split.filenames[row] for row in rows]
  return sample


def _square_photo(path, size):
  """uint8 [size, size, 3]: the photo's centre square; None if unreadable.

  A JPEG is decoded at 1/2, 1/4 or 1/8 of its size where that still covers
  `size` (the decoder scales for almost nothing), so big photos cost little.
  """
  try:
    with Image.open(path) as photo:
      photo.draft('RGB', (size, size))
      return np.asarray(ImageOps.fit(photo.convert('RGB'), (size, size),
                                     Image.Resampling.BILINEAR))
  except (OSError, ValueError, Image.DecompressionBombError):
    return None


def square_photos(paths, size):
  """uint8 [len(paths), size, size, 3]; grey where a file cannot be read.

  Pillow, in threads: without tf.data's start-up per call it takes less
  than half of TensorFlow's time here (bench/dashboards.py).
  """
  photos = np.full([len(paths), size, size, 3], 128, np.uint8)
  with concurrent.futures.ThreadPoolExecutor() as pool:
    for index, photo in enumerate(pool.map(
        lambda path: _square_photo(path, size), paths)):
      if photo is not None:
        photos[index] = photo
  return photos


def sprite_jpeg(thumbnails):
  """The thumbnails in rows, left to right, as one JPEG (the sprite)."""
  count, size = len(thumbnails), thumbnails.shape[1]
  columns = math.ceil(math.sqrt(count))
  rows = math.ceil(count / columns)
  sheet = np.full([rows * columns, size, size, 3], 255, np.uint8)
  sheet[:count] = thumbnails
  sheet = sheet.reshape(rows, columns, size, size, 3).swapaxes(1, 2).reshape(
      rows * size, columns * size, 3)
  encoded = io.BytesIO()
  Image.fromarray(sheet).save(encoded, 'JPEG', quality=85)
  return encoded.getvalue()


def _sprite_key(paths):
  """Names the photos and their versions: a changed photo gives a new key."""
  digest = hashlib.sha256(str(THUMBNAIL_SIZE).encode())
  for path in paths:
    try:
      stat = os.stat(path)
      version = f'{stat.st_size}:{stat.st_mtime_ns}'
    except OSError:
      version = 'unreadable'
    digest.update(os.fsencode(path) + b'\0' + version.encode() + b'\0')
  return digest.hexdigest()


def cached_sprite(paths, cache_dir):
  """sprite_jpeg of `paths`, read from `cache_dir` if it was made before."""
  path = os.path.join(cache_dir, f'{_sprite_key(paths)}.jpg')
  if os.path.isfile(path):
    with open(path, 'rb') as f:
      return f.read()
  sprite = sprite_jpeg(square_photos(paths, THUMBNAIL_SIZE))
  files.atomic_write(path, sprite)
  return sprite


def _shown(text):
  """A name as one line of valid UTF-8: a file name need not be either."""
  return ' '.join(os.fsencode(text).decode('utf-8', 'replace').split())


def _tensor_file(name, features):
  """(file name, contents) of one embedding for the Projector.

  Raw float32, unless those bytes happen to read as UTF-8 text: the
  Projector takes any file that decodes as text for TSV.
  """
  data = np.ascontiguousarray(features, np.float32).tobytes()
  try:
    data.decode('utf-8')
  except UnicodeDecodeError:
    return f'{name}.bytes', data
  text = io.BytesIO()
  np.savetxt(text, features, fmt='%.7g', delimiter='\t')
  return f'{name}.tsv', text.getvalue()


def write_projector(directory, sample, embeddings, sprite_cache):
  """The Projector's files for `sample` in `directory`.

  `embeddings` maps a name to float32 [len(sample), size], row i for point
  i: the bottlenecks (`sample.features(splits)`), and any other features of
  the same photos (fine-tuned ones) under names of their own, so the
  Projector offers each with the same labels and thumbnails. The sprite
  comes from (or goes into) the folder `sprite_cache`.
  """
  metadata = ['label\tsplit\tfile'] + [
      f'{_shown(label)}\t{split}\t{_shown(os.path.basename(path))}'
      for label, split, path in zip(sample.labels, sample.splits,
                                    sample.filenames)]
  files.atomic_write(os.path.join(directory, METADATA),
                     ('\n'.join(metadata) + '\n').encode('utf-8'))
  files.atomic_write(os.path.join(directory, SPRITE),
                     cached_sprite(sample.filenames, sprite_cache))
  config = projector_config_pb2.ProjectorConfig()
  for name, features in embeddings.items():
    tensor_path, contents = _tensor_file(name, features)
    files.atomic_write(os.path.join(directory, tensor_path), contents)
    embedding = config.embeddings.add(tensor_name=name,
                                      tensor_path=tensor_path,
                                      metadata_path=METADATA)
    embedding.tensor_shape.extend(features.shape)
    embedding.sprite.image_path = SPRITE
    embedding.sprite.single_image_dim.extend([THUMBNAIL_SIZE] * 2)
  # Last: the Projector lists the run once this file is there.
  files.atomic_write(os.path.join(directory, PROJECTOR_CONFIG),
                     text_format.MessageToString(config))


def _figure_image(figure):
  """A matplotlib figure as uint8 [height, width, 3]."""
  canvas = FigureCanvasAgg(figure)
  canvas.draw()
  return np.ascontiguousarray(np.asarray(canvas.buffer_rgba())[..., :3])


def confusion_figure(evaluation, labels):
  """Counts of each true class (rows) predicted as each class (columns),
  shaded by the share of the row."""
  confusion = evaluation.confusion
  shares = confusion / np.maximum(confusion.sum(axis=1, keepdims=True), 1)
  names = [_shown(label)[:24] for label in labels]
  # Margins in inches, fitted to the names: an automatic layout costs more
  # than the drawing.
  grid = 0.5 * len(labels)
  margin = 0.6 + 0.075 * max(len(name) for name in names)
  width, height = margin + grid + 0.3, margin + grid + 0.5
  figure = Figure(figsize=(width, height), dpi=100)
  axes = figure.add_axes([margin / width, margin / height, grid / width,
                          grid / height])
  axes.imshow(shares, cmap='Blues', vmin=0, vmax=1, aspect='auto')
  axes.set_xticks(range(len(labels)), names, rotation=45, ha='right',
                  rotation_mode='anchor')
  axes.set_yticks(range(len(labels)), names)
  if len(labels) <= 20:
    for (row, column), count in np.ndenumerate(confusion):
      axes.text(column, row, str(count), ha='center', va='center',
                color='white' if shares[row, column] > 0.5 else 'black')
  axes.set_xlabel('predicted class')
  axes.set_ylabel('true class')
  figure.suptitle(f'{evaluation.count} test photos, '
                  f'{evaluation.accuracy:.1%} right', y=1 - 0.1 / height,
                  va='top')
  return figure


def _fitted(text, font, width):
  """`text`, shortened with an ellipsis to at most `width` pixels."""
  if font.getlength(text) <= width:
    return text
  while text and font.getlength(text + '…') > width:
    text = text[:-1]
  return text + '…'


def misclassified_image(evaluation, labels):
  """The most confident mistakes on the test set, each photo under its
  file name, true class, and predicted class with its score: uint8
  [height, width, 3], or None if there are none."""
  wrong = np.flatnonzero(evaluation.predictions != evaluation.ground_truth)
  if not len(wrong):
    return None
  confidence = evaluation.scores[wrong, evaluation.predictions[wrong]]
  shown = wrong[np.argsort(-confidence, kind='stable')][:MISCLASSIFIED_SHOWN]
  photos = square_photos([evaluation.filenames[i] for i in shown],
                         MISCLASSIFIED_SIZE)
  font = ImageFont.truetype(font_manager.findfont('DejaVu Sans'), 12)
  line = 16  # pixels per line of text
  columns = min(2, len(shown))  # narrow: TensorBoard fits it to a card
  cell_width = MISCLASSIFIED_SIZE + 20
  cell_height = MISCLASSIFIED_SIZE + 4 * line
  sheet = Image.new('RGB', (columns * cell_width, 2 * line + math.ceil(
      len(shown) / columns) * cell_height), 'white')
  draw = ImageDraw.Draw(sheet)
  heading = f'{len(wrong)} of {evaluation.count} test photos misclassified'
  if len(shown) < len(wrong):
    heading += f'; the {len(shown)} most confident'
  draw.text((10, line // 2), heading, fill='black', font=font)
  for cell, (index, photo) in enumerate(zip(shown, photos)):
    x = 10 + cell % columns * cell_width
    y = 2 * line + cell // columns * cell_height
    predicted = evaluation.predictions[index]
    name = _shown(os.path.basename(evaluation.filenames[index]))
    score = f' {evaluation.scores[index, predicted]:.0%}'
    room = cell_width - 14
    for row, (text, colour) in enumerate([
        (_fitted(name, font, room), 'dimgray'),
        (_fitted('true: ' + _shown(labels[evaluation.ground_truth[index]]),
                 font, room), 'black'),
        (_fitted('predicted: ' + _shown(labels[predicted]), font,
                 room - font.getlength(score)) + score, 'firebrick')]):
      draw.text((x, y + row * line), text, fill=colour, font=font)
    sheet.paste(Image.fromarray(photo), (x, y + 3 * line + 2))
  return np.asarray(sheet)


def _table(rows, header):
  """A Markdown table, which the Text dashboard draws as a table."""
  lines = ['| ' + ' | '.join(header) + ' |', '|' + '---|' * len(header)]
  lines += ['| ' + ' | '.join(str(cell).replace('|', r'\|') for cell in row)
            + ' |' for row in rows]
  return '\n'.join(lines)


def settings_table(run_settings):
  """Every setting of the run; the ones changed from the default in bold."""
  defaults = RetrainSettings()
  rows = []
  for field in dataclasses.fields(RetrainSettings):
    value = getattr(run_settings, field.name)
    changed = value != getattr(defaults, field.name)
    shown = f'`{_shown(str(value))}`' if value != '' else ''
    rows.append((f'**{field.name}**' if changed else field.name,
                 f'**{shown}**' if changed and shown else shown))
  return _table(rows, ('flag', 'value'))


def network_table(module):
  """The network the run resolved its settings to."""
  height, width = module.image_size
  return _table([('name', f'`{_shown(module.spec.name)}`'),
                 ('loaded from', f'`{_shown(module.spec.handle)}`'),
                 ('input image', f'{height} x {width} pixels'),
                 ('bottleneck', f'{module.bottleneck_size} values')],
                ('network', ''))


def _sample_text(sample, splits, embeddings):
  counts = ', '.join(
      f'{len(rows)} of {len(splits[name].ground_truth)} {name}'
      for name, rows in sample.rows.items())
  text = (f'{len(sample)} photos as points ({counts}; at most '
          f'{TRAINING_POINTS} training photos and {EVALUATION_POINTS:,} of '
          'each of the others). Open the Projector tab, colour by label, '
          'and try PCA, t-SNE and UMAP.')
  if FINE_TUNED in embeddings:
    text += (f' `{PRETRAINED}` are the pretrained network\'s features, '
             f'`{FINE_TUNED}` those of the fine-tuned network: pick either '
             'at the top left to see what fine-tuning moved.')
  return text


def _encoded(image, image_format):
  """uint8 [height, width, 3] as the bytes of a PNG or JPEG file."""
  encoded = io.BytesIO()
  Image.fromarray(image).save(encoded, image_format)
  return encoded.getvalue()


@dataclasses.dataclass
class Picture:
  """One picture of the test set, for the Images tab and as a file."""
  tag: str  # the Images tab's name, and the file's stem
  image: np.ndarray  # uint8 [height, width, 3]
  image_format: str  # 'PNG' (sharp lines and text) or 'JPEG' (photos)
  description: str

  @property
  def file_name(self):
    return self.tag + ('.png' if self.image_format == 'PNG' else '.jpg')


def _image_summary(picture):
  """An Images-tab summary of a Picture, encoded here: the tensorboard
  plugin's own pb() starts a TensorFlow session to encode it, which costs
  more than all the rest."""
  height, width = picture.image.shape[:2]
  metadata = tf.compat.v1.SummaryMetadata.FromString(
      image_metadata.create_summary_metadata(
          display_name=picture.tag,
          description=picture.description).SerializeToString())
  summary = tf.compat.v1.Summary()
  summary.value.add(tag=picture.tag, metadata=metadata,
                    tensor=tf.make_tensor_proto(
                        [str(width), str(height),
                         _encoded(picture.image, picture.image_format)],
                        dtype=tf.string))
  return summary


def pictures_of(test, labels):
  """The confusion matrix of the test Evaluation `test`, and its
  misclassified photos if there are any: a list of Pictures."""
  pictures = [Picture(
      'confusion_matrix', _figure_image(confusion_figure(test, labels)),
      'PNG', 'Rows: the true class; columns: what the network said. The '
      'diagonal is right.')]
  mistakes = misclassified_image(test, labels)
  if mistakes is not None:
    pictures.append(Picture(
        'misclassified', mistakes, 'JPEG', 'Test photos the network got '
        'wrong, the most confident first: the true class, the prediction '
        'and its score.'))
  return pictures


def write_pictures(directory, test, labels):
  """The pictures_of the test set as files in `directory`, to open without
  TensorBoard (experiments.py's run folders); returns their paths."""
  paths = []
  for picture in pictures_of(test, labels):
    paths.append(os.path.join(directory, picture.file_name))
    files.atomic_write(paths[-1], _encoded(picture.image,
                                           picture.image_format))
  return paths


def _tagged(summary, tag):
  """`summary` under exactly `tag`: the plugins' pb() append a suffix."""
  (value,) = summary.value
  value.tag = tag
  return summary


def _event_writer(directory):
  """summary_ops.event_writer, which needs a graph, for summaries made here."""
  with tf.Graph().as_default():
    return summary_ops.event_writer(directory)


def _embeddings(sample, splits, layer, cut, cut_splits):
  """The features the Projector shows of `sample`: the pretrained ones, and
  once the top was fine-tuned, the top's trained values run on the same
  photos' cuts."""
  embeddings = {PRETRAINED: sample.features(splits)}
  if cut is not None and fine_tuning.is_fine_tuned(layer):
    (embeddings[FINE_TUNED],) = fine_tuning.top_features(
        cut, [sample.features(cut_splits)], layer)
  return embeddings


def write_run(summaries_dir, run_settings, module, splits, labels, result,
              cut=None, cut_splits=None):
  """Writes the Projector, Images, PR curves and Text of a finished run.

  `module` is the run's ModuleInfo, `splits` its SplitBottlenecks by split
  name, `result` its TrainingResult; its test Evaluation, if any, gives
  the images and curves. With --fine_tune_blocks, `cut` is its
  fine_tuning.Cut and `cut_splits` the cuts of the same photos.
  """
  step = result.steps_done
  sample = projector_sample(splits, labels)
  embeddings = _embeddings(sample, splits, result.layer, cut, cut_splits)
  projector_dir = os.path.join(summaries_dir, PROJECTOR_RUN)
  writer = _event_writer(projector_dir)
  writer.add_summary(_tagged(text_summary.pb(
      'points', _sample_text(sample, splits, embeddings)), 'points'), step)
  writer.close()
  if len(sample):
    write_projector(projector_dir, sample, embeddings,
                    os.path.join(run_settings.bottleneck_dir, SPRITE_CACHE))

  writer = _event_writer(os.path.join(summaries_dir, TEST_RUN))
  writer.add_summary(_tagged(text_summary.pb(
      'settings', settings_table(run_settings)), 'settings'), step)
  writer.add_summary(_tagged(text_summary.pb(
      'network', network_table(module)), 'network'), step)
  test = result.test
  if test is not None:
    for picture in pictures_of(test, labels):
      writer.add_summary(_image_summary(picture), step)
    for index, label in enumerate(labels):
      writer.add_summary(_tagged(pr_curve_summary.pb(
          'pr_curve', test.ground_truth == index,
          test.scores[:, index].astype(np.float32),
          display_name=_shown(label),
          description=f'Test photos ranked by their {_shown(label)} score: '
          'precision and recall at every threshold.'),
          f'pr_curves/{_shown(label)}'), step)
  writer.close()


def cross_entropy(evaluation):
  """Mean -log(score of the true class) over the evaluated photos."""
  true_scores = evaluation.scores[np.arange(evaluation.count),
                                  evaluation.ground_truth]
  return float(-np.mean(np.log(np.maximum(true_scores, 1e-12))))


# (run folder inside the session, tag, what the HParams table calls it).
_METRICS = (('', 'test_accuracy', 'test accuracy'),
            ('', 'test_cross_entropy', 'test cross entropy'),
            ('validation', 'accuracy', 'last validation accuracy'),
            ('train', 'cross_entropy', 'last training cross entropy'),
            ('', 'run_seconds', 'run time (s)'))
_STATUS = {'ok': api_pb2.STATUS_SUCCESS, 'failed': api_pb2.STATUS_FAILURE,
           'interrupted': api_pb2.STATUS_UNKNOWN}


def _number(text):
  try:
    return float(text)
  except ValueError:
    return None


def _hparam_info(sweep):
  """A number axis if every value is a number, else a list of words."""
  if all(_number(value) is not None for value in sweep.values):
    numbers = [_number(value) for value in sweep.values]
    return api_pb2.HParamInfo(
        name=sweep.key, type=api_pb2.DATA_TYPE_FLOAT64,
        domain_interval=api_pb2.Interval(min_value=min(numbers),
                                         max_value=max(numbers)))
  info = api_pb2.HParamInfo(name=sweep.key, type=api_pb2.DATA_TYPE_STRING)
  info.domain_discrete.extend(sweep.values)
  return info


def write_hparams(experiment, outcomes):
  """The HParams dashboard's view of a sweep, in its summaries folder.

  The experiment (the swept keys and the metrics) at the folder's top, and
  in each run's folder its values, its final metrics and how it ended.
  """
  numeric = {sweep.key: _hparam_info(sweep).type == api_pb2.DATA_TYPE_FLOAT64
             for sweep in experiment.sweeps}
  writer = _event_writer(experiment.summaries_dir)
  writer.add_summary(hparams_summary.experiment_pb(
      [_hparam_info(sweep) for sweep in experiment.sweeps],
      [api_pb2.MetricInfo(name=api_pb2.MetricName(group=group, tag=tag),
                          display_name=name)
       for group, tag, name in _METRICS],
      description=f'`{experiment.command}`' if experiment.command else ''))
  writer.close()
  for outcome in outcomes:
    writer = _event_writer(outcome.run.config.summaries_dir)
    writer.add_summary(hparams_summary.session_start_pb(
        {key: _number(value) if numeric[key] else value
         for key, value in outcome.run.values.items()}))
    result = outcome.result
    metrics = {'run_seconds': outcome.seconds}
    if result is not None and result.training.test is not None:
      metrics.update(test_accuracy=result.training.test.accuracy,
                     test_cross_entropy=cross_entropy(result.training.test))
    step = result.training.steps_done if result is not None else 0
    writer.add_summary(tf.compat.v1.Summary(value=[
        tf.compat.v1.Summary.Value(tag=tag, simple_value=value)
        for tag, value in metrics.items()]), step)
    writer.add_summary(hparams_summary.session_end_pb(
        _STATUS[outcome.status]))
    writer.close()
