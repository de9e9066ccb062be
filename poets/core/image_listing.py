"""Image lists: find the images of each class and split them.

The first stage of the pipeline, plain Python (no TensorFlow).
`create_image_lists` walks `--image_dir` (one sub-folder per class, searched
recursively, where the original looked one level deep and for JPEG only) and
assigns every image to training, testing or validation with the original
retrain.py's stable hash rule, so an image never changes sets when photos
are added; the hash is of `<class folder>/<image name>`, not of the path as
typed. Decoding is poets.core.image_decoding's.
"""

import dataclasses
import hashlib
import os
import random
import re
import stat

from absl import logging

from poets import files
from poets import settings
from poets.errors import PoetsError

# The original's cap: above this many images per class the hash buckets
# repeat, so some images would never be chosen.
MAX_NUM_IMAGES_PER_CLASS = 2**27 - 1

# Decoding goes by content, not extension, so the list only decides what
# counts as a photo when walking a folder.
IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.gif', '.bmp', '.webp')
# Photo formats TensorFlow cannot decode: counted when skipped, so that a
# folder of phone or camera photos is not left out without a word.
UNSUPPORTED_EXTENSIONS = ('.tif', '.tiff', '.heic', '.heif', '.avif', '.jxl',
                          '.jp2', '.psd', '.dng', '.cr2', '.cr3', '.nef',
                          '.arw', '.orf', '.rw2', '.raf')

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


def _inside(path, folders):
  """The first of `folders` (real paths) that `path` leads into, or None."""
  real = os.path.realpath(path)
  for folder in folders:
    if os.path.commonpath([real, folder]) == folder:
      return folder
  return None


def _leads_elsewhere(path, other_classes):
  """The class folder of `other_classes` a link at `path` leads into (said
  with a warning), or a false value."""
  other = os.path.islink(path) and _inside(path, other_classes)
  if other:
    logging.warning('Skipping %s: a link into the class folder %s, whose '
                    'photos stay in that class.', path, other)
  return other


def _folders_to_walk(root, dirs, seen, other_classes):
  """Of the sub-folders `dirs` of `root`, those to walk into, each real
  folder once (added to `seen`); and how many were left out as already
  walked."""
  kept, repeated = [], 0
  # Real folders before links to them, then by name, so the way to a
  # folder that is kept does not vary.
  for name in sorted((d for d in dirs if not d.startswith('.')),
                     key=lambda d: (os.path.islink(os.path.join(root, d)), d)):
    if _leads_elsewhere(os.path.join(root, name), other_classes):
      continue
    identity = _identity(os.path.join(root, name))
    if identity in seen:
      repeated += 1
    else:
      seen.add(identity)
      kept.append(name)
  return kept, repeated


def _is_photo(name, unsupported):
  """Whether a file name is a photo to take, by its extension; one in a
  format TensorFlow cannot decode is appended to `unsupported`, if given."""
  extension = os.path.splitext(name)[1].lower()
  if extension in IMAGE_EXTENSIONS:
    return True
  if unsupported is not None and extension in UNSUPPORTED_EXTENSIONS:
    unsupported.append(extension)
  return False


def _photo_identity(path, other_classes):
  """The (device, inode) of the photo at `path` (the path itself for a
  dangling link, reported when it fails to read), or None for one to skip,
  said with a warning."""
  if other_classes and _leads_elsewhere(path, other_classes):
    return None
  try:
    status = os.stat(path)
  except OSError:
    return path
  if not stat.S_ISREG(status.st_mode):
    # Reading one would wait for a writer (a pipe), or never end.
    logging.warning('Skipping %s: not a regular file (a pipe, a device '
                    'or a folder).', path)
    return None
  if status.st_size > settings.MAX_IMAGE_BYTES:
    logging.warning('Skipping %s: %s, larger than any photo.', path,
                    files.mebibytes(status.st_size))
    return None
  return status.st_dev, status.st_ino


def _one_name_each(by_identity, seen, class_path):
  """One name for each photo not in `seen` (added to it), sorted; and how
  many names were left out as another way to a photo."""
  found, repeated = [], 0
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


def find_images(class_path, seen=None, other_classes=(), unsupported=None):
  """Image files under a class folder, recursively, skipping hidden entries.

  Links are followed, but each real folder and file is taken once: a link
  back up the tree would otherwise loop until the path grew too long, and a
  photo reached twice could land in both training and test. `seen` holds
  the (device, inode) of everything taken so far, to share it between
  folders; returns (relative paths, sorted; how many were left out as
  already found). A link into one of `other_classes` (real paths of the
  other class folders) is left out with a warning: its photos belong to
  the class the user filed them in. A folder that cannot be read is
  reported, not silently skipped. The extension of each photo in a format
  TensorFlow cannot decode is appended to the list `unsupported`, if given.
  """

  def unreadable(error):
    logging.warning('Cannot read the folder %s (%s); its photos are left '
                    'out.', error.filename, error.strerror)

  seen = set() if seen is None else seen
  if _identity(class_path) in seen:  # A link to a folder already searched.
    return [], 1
  seen.add(_identity(class_path))
  by_identity = {}  # One stat per file: listing time matters at scale.
  repeated = 0
  for root, dirs, names in os.walk(class_path, followlinks=True,
                                   onerror=unreadable):
    dirs[:], walked_before = _folders_to_walk(root, dirs, seen, other_classes)
    repeated += walked_before
    # Once a folder: relpath per file took most of the listing's time.
    folder = os.path.relpath(root, class_path)
    for name in names:
      if name.startswith('.') or not _is_photo(name, unsupported):
        continue
      identity = _photo_identity(os.path.join(root, name), other_classes)
      if identity is not None:
        by_identity.setdefault(identity, []).append(
            name if folder == '.' else os.path.join(folder, name))
  found, other_ways = _one_name_each(by_identity, seen, class_path)
  return found, repeated + other_ways


def _missing_dir_message(image_dir):
  message = f"Image directory '{image_dir}' not found."
  if os.path.normpath(image_dir) == os.path.normpath(
      settings.DEFAULT_IMAGE_DIR):
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


def loose_images(image_dir):
  """The photos directly in `image_dir`, which belong to no class."""
  return sorted(
      name for name in os.listdir(image_dir)
      if not name.startswith('.') and
      os.path.splitext(name)[1].lower() in (IMAGE_EXTENSIONS +
                                            UNSUPPORTED_EXTENSIONS) and
      os.path.isfile(os.path.join(image_dir, name)))


def _log_skipped(image_dir, loose, unsupported):
  """One line for the photos left out before any is decoded."""
  parts = []
  if loose:
    parts.append(f'{len(loose)} loose in {image_dir} (only photos inside a '
                 'class sub-folder are used; move them into one)')
  if unsupported:
    kinds = ', '.join(f'{unsupported.count(extension)} {extension}'
                      for extension in sorted(set(unsupported)))
    parts.append(f'{len(unsupported)} in formats TensorFlow cannot decode '
                 f'({kinds}; convert them to JPEG or PNG)')
  if parts:
    logging.warning('Skipped photos: %s.', ' and '.join(parts))


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
  unsupported = []
  for dir_name in dir_names:
    class_path = os.path.join(image_dir, dir_name)
    logging.info("Looking for images in '%s'", dir_name)
    own = real_dirs[dir_name]
    images, repeated = find_images(
        class_path, seen, [real for real in real_dirs.values()
                           if os.path.commonpath([real, own]) != real],
        unsupported)
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
  _log_skipped(image_dir, loose_images(image_dir), unsupported)
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


def given_images(paths, image_dir):
  """The images to label (or calibrate on): `paths` as given, then
  `image_dir`'s photos."""
  found = list(paths)
  if image_dir:
    if not os.path.isdir(image_dir):
      raise PoetsError(f'--image_dir {image_dir} is not a folder; pass a '
                       'folder of photos.')
    in_dir, _ = find_images(image_dir)
    if not in_dir:
      raise PoetsError(f'--image_dir {image_dir} holds no images ending in '
                       f'{", ".join(IMAGE_EXTENSIONS)}.')
    found += [os.path.join(image_dir, name) for name in in_dir]
  if not found:
    raise PoetsError('No images to label; pass --image photo.jpg (several '
                     'allowed) or --image_dir folder/.')
  return found
