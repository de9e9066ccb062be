"""Image decoding: file bytes to the float [0, 1] RGB a module expects.

`decode_and_resize` and `decode_and_distort` are the TensorFlow ops that turn
file bytes into pixels; retrain.py and label_image.py share them so an image
gets the same pixels in both. `decode_in_batches` is the one tf.data pipeline
that decodes a list of files for bottlenecks and labeling, and says why it
left a file out; training's distortions share its batching and options.
"""

import dataclasses
import os

import numpy as np
import tensorflow as tf

from poets import settings
from poets.core import photo_decoding


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


def decode_and_normalize(contents, height, width, mean, std):
  """File bytes -> float32 [height, width, 3]: retrain.py's decode and resize,
  then (pixel - mean) / std; for mean 0, std 255 exactly decode_and_resize."""
  resized = resize(decode_image(contents), height, width)
  return (resized - mean) / std


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

  Autotuning's model thread can hold up closing the session for seconds;
  without it AUTOTUNE still decodes one image per core at a time.
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
    """(image, None), or (None, the Failure that says why not)."""
    contents, failure = photo_decoding.read_file(path)
    if failure:
      return None, failure
    try:
      return session.run(self.decoded, {self.contents: contents}), None
    except tf.errors.OpError as e:
      return None, photo_decoding.Failure(decode_failure_reason(e),
                                          unreadable=False)


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
  and resizes its own way). Only regular files of at most
  settings.MAX_IMAGE_BYTES go in: reading a pipe or a device could wait
  forever, a huge file fill memory.
  """
  regular = [position for position, path in enumerate(paths)
             if os.path.isfile(path) and
             os.path.getsize(path) <= settings.MAX_IMAGE_BYTES]

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
