"""Images: find them, split them, decode them.

The first stage of the pipeline. `create_image_lists` walks `--image_dir` (one
sub-folder per class) and assigns every image to training, testing or
validation with the original retrain.py's stable hash rule, so an image never
changes sets when photos are added. `decode_and_resize` and `decode_and_distort`
are the TensorFlow ops that turn file bytes into the float [0,1] RGB a module
expects; retrain.py and label_image.py share them so an image gets the same
pixels in both. `decode_in_batches` is the one tf.data pipeline that decodes a
list of files for bottlenecks and labeling, and says why it left a file out;
training's distortions share its batching and options.
"""

import dataclasses
import hashlib
import os
import random
import re
import stat

from absl import logging
import numpy as np
import tensorflow as tf

from poets.errors import PoetsError

# The original's cap: above this many images per class the hash buckets
# repeat, so some images would never be chosen.
MAX_NUM_IMAGES_PER_CLASS = 2**27 - 1
# A photo file larger than this is not read (a camera's largest RAW-sized
# JPEG is a few hundred MB; a 60 GB sparse file would fill memory).
MAX_IMAGE_BYTES = 512 * 2**20

# Decoding goes by content, not extension, so the list only decides what
# counts as a photo when walking a folder.
IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.gif', '.bmp', '.webp')

DEFAULT_IMAGE_DIR = 'tf_files/flower_photos'
FLOWER_PHOTOS_COMMAND = (
    'curl http://download.tensorflow.org/example_images/flower_photos.tgz'
    ' | tar xz -C tf_files')

SPLITS = ('training', 'testing', 'validation')


@dataclasses.dataclass
class ClassImages:
  """One class: its label, its folder, and its images in each split.

  Image names are paths relative to the class folder (nested sub-folders
  allowed), as the original kept base names.
  """
  label: str
  dir: str
  training: list[str]
  testing: list[str]
  validation: list[str]

  def split(self, name):
    return getattr(self, name)


@dataclasses.dataclass
class ImageLists:
  """The split of a whole image folder; classes in sorted label order."""
  image_dir: str
  classes: list[ClassImages]

  @property
  def labels(self):
    return [c.label for c in self.classes]

  def image_path(self, class_index, image_name):
    return os.path.join(self.image_dir, self.classes[class_index].dir,
                        image_name)


def label_for(dir_name):
  """The class label the original derived from a folder name."""
  return re.sub(r'[^a-z0-9]+', ' ', dir_name.lower())


def which_split(class_dir, image_name, testing_percentage,
                validation_percentage):
  """Assigns an image to a split by a hash of its name, as the original did.

  Anything after `_nohash_` is ignored so variants of one photo stay together.
  We hash `<class folder>/<image name>` rather than the path as typed, so
  `tf_files/x` and `./tf_files/x/` give the same split.
  """
  hash_name = re.sub(r'_nohash_.*$', '', f'{class_dir}/{image_name}')
  hash_hex = hashlib.sha1(hash_name.encode('utf-8', 'surrogateescape')).hexdigest()
  percentage_hash = ((int(hash_hex, 16) % (MAX_NUM_IMAGES_PER_CLASS + 1)) *
                     (100.0 / MAX_NUM_IMAGES_PER_CLASS))
  if percentage_hash < validation_percentage:
    return 'validation'
  if percentage_hash < testing_percentage + validation_percentage:
    return 'testing'
  return 'training'


def _identity(path):
  """What makes a file or folder the same one however it is reached; a
  dangling link is only itself (and is reported when it fails to read)."""
  try:
    status = os.stat(path)
  except OSError:
    return path
  return status.st_dev, status.st_ino


def _mebibytes(size):
  return f'{size / 2**20:,.0f} MiB'


def _inside(path, folders):
  """The first of `folders` (real paths) that `path` leads into, or None."""
  real = os.path.realpath(path)
  for folder in folders:
    if os.path.commonpath([real, folder]) == folder:
      return folder
  return None


def find_images(class_path, seen=None, other_classes=()):
  """Image files under a class folder, recursively, skipping hidden entries.

  Links are followed, but each real folder and file is taken once: a link
  back up the tree would otherwise loop until the path grew too long, and a
  photo reached twice could land in both training and test. `seen` holds
  the (device, inode) of everything taken so far, to share it between
  folders; returns (relative paths, sorted; how many were left out as
  already found). A link into one of `other_classes` (real paths of the
  other class folders) is left out with a warning: its photos belong to
  the class the user filed them in. A folder that cannot be read is
  reported, not silently skipped.
  """

  def unreadable(error):
    logging.warning('Cannot read the folder %s (%s); its photos are left '
                    'out.', error.filename, error.strerror)

  def leads_elsewhere(path):
    other = os.path.islink(path) and _inside(path, other_classes)
    if other:
      logging.warning('Skipping %s: a link into the class folder %s, whose '
                      'photos stay in that class.', path, other)
    return other

  seen = set() if seen is None else seen
  if _identity(class_path) in seen:  # A link to a folder already searched.
    return [], 1
  seen.add(_identity(class_path))
  by_identity = {}  # One stat per file: listing time matters at scale.
  repeated = 0
  for root, dirs, files in os.walk(class_path, followlinks=True,
                                   onerror=unreadable):
    kept = []
    # Real folders before links to them, then by name, so the way to a
    # folder that is kept does not vary.
    for name in sorted((d for d in dirs if not d.startswith('.')),
                       key=lambda d: (os.path.islink(os.path.join(root, d)),
                                      d)):
      if leads_elsewhere(os.path.join(root, name)):
        continue
      identity = _identity(os.path.join(root, name))
      if identity in seen:
        repeated += 1
      else:
        seen.add(identity)
        kept.append(name)
    dirs[:] = kept
    # Once a folder: relpath per file took most of the listing's time.
    folder = os.path.relpath(root, class_path)
    for name in files:
      if (name.startswith('.') or
          os.path.splitext(name)[1].lower() not in IMAGE_EXTENSIONS):
        continue
      path = os.path.join(root, name)
      if other_classes and leads_elsewhere(path):
        continue
      try:
        status = os.stat(path)
        identity = status.st_dev, status.st_ino
      except OSError:  # A dangling link: reported when it fails to read.
        status, identity = None, path
      if status and not stat.S_ISREG(status.st_mode):
        # Reading one would wait for a writer (a pipe), or never end.
        logging.warning('Skipping %s: not a regular file (a pipe, a device '
                        'or a folder).', path)
        continue
      if status and status.st_size > MAX_IMAGE_BYTES:
        logging.warning('Skipping %s: %s, larger than any photo.', path,
                        _mebibytes(status.st_size))
        continue
      by_identity.setdefault(identity, []).append(
          name if folder == '.' else os.path.join(folder, name))
  found = []
  for identity, names in by_identity.items():
    repeated += len(names) - 1
    if identity in seen:
      repeated += 1
      continue
    seen.add(identity)
    # Of two ways to one photo the real file, not a link to it; then by name.
    found.append(min(names, key=lambda n: (
        os.path.islink(os.path.join(class_path, n)), n)) if len(names) > 1
                 else names[0])
  return sorted(found), repeated


def _missing_dir_message(image_dir):
  message = f"Image directory '{image_dir}' not found."
  if os.path.normpath(image_dir) == os.path.normpath(DEFAULT_IMAGE_DIR):
    message += (f' Download the codelab\'s flower photos (needs network) with:'
                f' {FLOWER_PHOTOS_COMMAND}  -- or pass --image_dir with any'
                ' folder of class sub-folders.')
  else:
    message += (' Pass --image_dir a folder holding one sub-folder of images'
                ' per class.')
  return message


def class_dirs(image_dir):
  """The names of the class folders in `image_dir`, sorted; hidden ones aside.

  Raises PoetsError when `image_dir` is not a folder.
  """
  if not os.path.isdir(image_dir):
    raise PoetsError(_missing_dir_message(image_dir))
  return [name for name in sorted(os.listdir(image_dir))
          if not name.startswith('.') and
          os.path.isdir(os.path.join(image_dir, name))]


def create_image_lists(image_dir, testing_percentage, validation_percentage):
  """Finds the classes and images under `image_dir` and splits them.

  Returns an ImageLists with classes sorted by label. Raises PoetsError when
  the folder is missing or holds fewer than two classes with images.
  """
  classes = []
  dir_names = class_dirs(image_dir)
  seen = {_identity(image_dir)}
  real_dirs = {name: os.path.realpath(os.path.join(image_dir, name))
               for name in dir_names}
  for dir_name in dir_names:
    class_path = os.path.join(image_dir, dir_name)
    logging.info("Looking for images in '%s'", dir_name)
    own = real_dirs[dir_name]
    images, repeated = find_images(
        class_path, seen, [real for real in real_dirs.values()
                           if os.path.commonpath([real, own]) != real])
    if repeated:
      logging.warning('%s: %d links lead to folders or photos already found; '
                      'each is used once.', class_path, repeated)
    if not images:
      logging.warning('No files found in %s', class_path)
      continue
    if len(images) < 20:
      # The original's words, without its 'WARNING: ', which the log line
      # already starts with.
      logging.warning(
          'Folder %s has less than 20 images, which may cause issues.',
          dir_name)
    elif len(images) > MAX_NUM_IMAGES_PER_CLASS:
      logging.warning(
          'Folder %s has more than %d images. Some images will never '
          'be selected.', dir_name, MAX_NUM_IMAGES_PER_CLASS)
    splits = {name: [] for name in SPLITS}
    for image in images:
      splits[which_split(dir_name, image, testing_percentage,
                         validation_percentage)].append(image)
    classes.append(ClassImages(label=label_for(dir_name), dir=dir_name,
                               **splits))
  classes.sort(key=lambda c: c.label)
  labels = [c.label for c in classes]
  for previous, current in zip(classes, classes[1:]):
    if previous.label == current.label:
      raise PoetsError(
          f"Folders '{previous.dir}' and '{current.dir}' in {image_dir} both "
          f"give the label '{current.label}'; rename one of them.")
  if len(labels) < 2:
    found = f'only {labels[0]!r}' if labels else 'none'
    raise PoetsError(
        f'{image_dir} needs at least 2 class folders with images (found '
        f'{found}); add one sub-folder of images per class.')
  return ImageLists(image_dir=image_dir, classes=classes)


def limit_training_images(image_lists, per_class, seed=None):
  """Keeps at most `per_class` training images of each class.

  For learning curves: the choice is seeded (None = a fixed default) and
  nested (a smaller limit keeps a subset of a larger one's images), and the
  testing and validation images stay as split, so runs stay comparable.
  """
  seed = 0 if seed is None else seed
  classes = []
  for image_class in image_lists.classes:
    # Seeded by class too, so a class's choice ignores the other classes.
    shuffled = random.Random(f'{seed}/{image_class.label}').sample(
        image_class.training, len(image_class.training))
    classes.append(dataclasses.replace(
        image_class, training=sorted(shuffled[:per_class])))
  return dataclasses.replace(image_lists, classes=classes)


def decode_failure_reason(error):
  """The useful line of a TensorFlow decode error.

  Graph errors wrap the reason ("Unknown image file format...") between a
  generic first line and a [[node]] marker; it is the last line before it.
  """
  lines = [line.strip() for line in error.message.splitlines()
           if line.strip() and not line.strip().startswith('[[')]
  return (lines or [type(error).__name__])[-1]


def decode_image(contents):
  """Decodes JPEG, PNG, GIF (first frame), BMP or WEBP bytes to uint8 RGB.

  Goes by content, so a PNG named .jpg decodes; grayscale and RGBA become RGB.
  """
  image = tf.io.decode_image(contents, channels=3, expand_animations=False)
  image.set_shape([None, None, 3])
  return image


def resize(image, height, width):
  """uint8 [h, w, 3] -> float32 [height, width, 3] in [0, 255], bilinear.

  Resizing the uint8 image before converting keeps a very large photo from
  becoming an even larger float copy. label_image.py normalizes the result
  with its own mean and std, so it sees the pixels retrain.py saw.
  """
  return tf.image.resize(image, [height, width],
                         method=tf.image.ResizeMethod.BILINEAR)


def decode_and_resize(contents, height, width):
  """File bytes -> float32 [height, width, 3] in [0, 1], bilinear resize."""
  return resize(decode_image(contents), height, width) / 255.0


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


def decode_and_distort(contents, height, width, distortions, seed):
  """File bytes -> a randomly distorted float32 [height, width, 3] in [0, 1].

  The original's recipe: scale up by the crop margin times a random scale,
  crop a random window of the module's size, maybe flip, then multiply the
  brightness by a random factor. `seed` is a stateless seed (shape [2]), so
  each image's distortion is fixed by its seed however tf.data schedules the
  work, and seeded runs repeat exactly.
  """
  scale_seed, crop_seed, flip_seed, brightness_seed = tf.unstack(
      tf.random.experimental.stateless_split(seed, 4))
  image = decode_image(contents)
  margin_scale = 1.0 + distortions.random_crop / 100.0
  resize_scale = tf.random.stateless_uniform(
      [], scale_seed, 1.0, 1.0 + distortions.random_scale / 100.0)
  scale = margin_scale * resize_scale
  precrop_size = tf.cast(tf.stack([scale * height, scale * width]), tf.int32)
  precropped = tf.image.resize(image, precrop_size,
                               method=tf.image.ResizeMethod.BILINEAR) / 255.0
  distorted = tf.image.stateless_random_crop(precropped, [height, width, 3],
                                             crop_seed)
  if distortions.flip_left_right:
    distorted = tf.image.stateless_random_flip_left_right(distorted,
                                                          flip_seed)
  brightness = tf.random.stateless_uniform(
      [], brightness_seed, 1.0 - distortions.random_brightness / 100.0,
      1.0 + distortions.random_brightness / 100.0)
  return distorted * brightness


def pipeline_options():
  """The tf.data options of every image pipeline here.

  Autotuning's model thread held up closing the session in about half of our
  runs (4 s typical, 10 s seen, on 600 photos); without it AUTOTUNE still
  decodes one image per core at a time.
  """
  options = tf.data.Options()
  options.autotune.enabled = False
  return options


def in_parallel_batches(dataset, load, batch_size, skip_failures=False):
  """`load` mapped over `dataset` in parallel, kept in order, in batches.

  With `skip_failures` an element whose `load` fails (a file that cannot be
  read or decoded) is left out; without it the error stops the pipeline,
  which is right where no element should fail and skipping could wait
  forever for a batch (training samples endlessly from decoded images).
  """
  loaded = dataset.map(load, num_parallel_calls=tf.data.AUTOTUNE)
  if skip_failures:
    loaded = loaded.ignore_errors()
  return (loaded.batch(batch_size).prefetch(2)
          .with_options(pipeline_options()))


def file_names(paths):
  """Paths as a tf.string array: bytes, not str, because a file name need
  not be valid UTF-8 to exist."""
  return np.array([os.fsencode(path) for path in paths], object)


@dataclasses.dataclass(frozen=True)
class Failure:
  """Why an image file gave no image."""
  reason: str  # The operating system's strerror, or TensorFlow's line.
  unreadable: bool  # The file could not be read; else, not be decoded.


@dataclasses.dataclass
class FileDecoder:
  """`decode` of one image file at a time, in a session.

  Where images come one by one (Beam), and to learn why the batch pipeline,
  which only drops what fails, left an image out.
  """
  contents: tf.Tensor
  decoded: tf.Tensor

  @classmethod
  def build(cls, decode):
    """The decoder in the current graph; `decode`: file bytes -> image."""
    contents = tf.compat.v1.placeholder(tf.string)
    return cls(contents, decode(contents))

  def decode_file(self, session, path):
    """(image, None), or (None, the Failure that says why not).

    A pipe or a device is refused, not read: reading one could wait forever.
    """
    try:
      status = os.stat(path)
      if not stat.S_ISREG(status.st_mode):
        return None, Failure('not a regular file (a pipe, a device or a '
                             'folder)', unreadable=True)
      if status.st_size > MAX_IMAGE_BYTES:
        return None, Failure(f'{_mebibytes(status.st_size)}, larger than '
                             'any photo', unreadable=True)
      with open(path, 'rb') as f:
        contents = f.read()
    except OSError as e:
      return None, Failure(e.strerror or str(e), unreadable=True)
    try:
      return session.run(self.decoded, {self.contents: contents}), None
    except tf.errors.OpError as e:
      return None, Failure(decode_failure_reason(e), unreadable=False)


@dataclasses.dataclass
class DecodedBatches:
  """Image files read and decoded in parallel, in batches, in a graph.

  A file that cannot be read or decoded is left out of the batches;
  `indices` says which of `paths` a batch holds, and `failures` why the
  others are missing.
  """
  paths: list[str]
  indices: tf.Tensor  # int64 [n]: positions in `paths`.
  images: tf.Tensor  # [n, ...]: what `decode` made of them.
  decoder: FileDecoder

  def failures(self, session, decoded):
    """(position, Failure) of each image not among the positions `decoded`;
    the Failure is None if the image decodes when tried again alone."""
    decoded = set(decoded)
    for position, path in enumerate(self.paths):
      if position not in decoded:
        yield position, self.decoder.decode_file(session, path)[1]


def decode_in_batches(paths, decode, batch_size):
  """Builds, in the current graph, the pipeline that decodes `paths`.

  `decode` turns one file's bytes into an image tensor (each module decodes
  and resizes its own way). Only regular files of at most MAX_IMAGE_BYTES
  go in: reading a pipe or a device could wait forever, a huge file fill
  memory.
  """
  regular = [position for position, path in enumerate(paths)
             if os.path.isfile(path) and
             os.path.getsize(path) <= MAX_IMAGE_BYTES]

  def load(position, path):
    return position, decode(tf.io.read_file(path))

  dataset = tf.data.Dataset.from_tensor_slices(
      (np.array(regular, np.int64),
       file_names([paths[position] for position in regular])))
  indices, batch = tf.compat.v1.data.make_one_shot_iterator(
      in_parallel_batches(dataset, load, batch_size, skip_failures=True)
  ).get_next()
  return DecodedBatches(list(paths), indices, batch, FileDecoder.build(decode))


def each_batch(session, fetches):
  """session.run(fetches), again and again until the pipeline ends."""
  while True:
    try:
      yield session.run(fetches)
    except tf.errors.OutOfRangeError:
      return
