"""Photo decoding without TensorFlow: label_image.py's path for a .tflite.

JPEGs go through libjpeg-turbo (simplejpeg) with the settings TensorFlow's
decode_jpeg uses (the fast integer DCT, fancy upsampling), so they decode to
the very pixels TensorFlow gives; Pillow decodes the other formats
TensorFlow's decode_image takes (PNG, GIF's first frame, BMP, WEBP) and any
JPEG libjpeg-turbo refuses. `resize` is tf.image.resize's bilinear
(half-pixel centers, no antialiasing) in NumPy. So a photo gets the pixels
poets.core.image_decoding gives it (docs/tflite.md has the measurement).
"""

import dataclasses
import io
import os
import stat

import numpy as np
from PIL import Image
import simplejpeg

from poets import files
from poets import settings

FORMATS = ('JPEG', 'PNG', 'GIF', 'BMP', 'WEBP')
JPEG_START = b'\xff\xd8'


@dataclasses.dataclass(frozen=True)
class Failure:
  """Why an image file gave no image."""
  reason: str  # The operating system's strerror, or the decoder's line.
  unreadable: bool  # The file could not be read; else, not be decoded.


def read_file(path):
  """(file bytes, None), or (None, the Failure that says why not).

  A pipe or a device is refused, not read: reading one could wait forever.
  """
  try:
    status = os.stat(path)
    if not stat.S_ISREG(status.st_mode):
      return None, Failure('not a regular file (a pipe, a device or a '
                           'folder)', unreadable=True)
    if status.st_size > settings.MAX_IMAGE_BYTES:
      return None, Failure(f'{files.mebibytes(status.st_size)}, larger '
                           'than any photo', unreadable=True)
    with open(path, 'rb') as f:
      return f.read(), None
  except OSError as e:
    return None, Failure(e.strerror or str(e), unreadable=True)


def decode_image(contents):
  """JPEG, PNG, GIF (first frame), BMP or WEBP bytes -> uint8 RGB [h, w, 3];
  grayscale and RGBA become RGB, as with TensorFlow's decode_image."""
  if contents.startswith(JPEG_START):
    try:
      return simplejpeg.decode_jpeg(contents, 'RGB', fastdct=True,
                                    fastupsample=False)
    except ValueError:
      pass  # Pillow decodes it if anything can, or says why not.
  with Image.open(io.BytesIO(contents), formats=FORMATS) as image:
    return np.asarray(image.convert('RGB'))


def _axis(in_size, out_size):
  """Source rows (or columns) below and above each output one, and the
  weight of the one above: tf.image.resize's half-pixel centers."""
  centers = ((np.arange(out_size, dtype=np.float32) + 0.5) *
             np.float32(in_size / out_size) - 0.5)
  floor = np.floor(centers)
  lower = np.clip(floor, 0, in_size - 1).astype(np.intp)
  upper = np.clip(np.ceil(centers), 0, in_size - 1).astype(np.intp)
  return lower, upper, (centers - floor).astype(np.float32)


def resize(image, height, width):
  """uint8 [h, w, 3] -> float32 [height, width, 3] in [0, 255], bilinear as
  tf.image.resize (antialias off) computes it."""
  top, bottom, y_weight = _axis(image.shape[0], height)
  left, right, x_weight = _axis(image.shape[1], width)
  x_weight = x_weight[None, :, None]
  rows = [image[rows_at].astype(np.float32) for rows_at in (top, bottom)]
  upper, lower = [row[:, left] + (row[:, right] - row[:, left]) * x_weight
                  for row in rows]
  return upper + (lower - upper) * y_weight[:, None, None]


def decode_file(path, height, width, mean, std):
  """(float32 [height, width, 3] pixels as (pixel - mean) / std, None), or
  (None, the Failure that says why not)."""
  contents, failure = read_file(path)
  if failure:
    return None, failure
  try:
    image = decode_image(contents)
  except (OSError, ValueError, SyntaxError, EOFError,
          Image.DecompressionBombError) as e:
    reason = ('Unknown image file format. One of JPEG, PNG, GIF, BMP or WEBP '
              'required.' if isinstance(e, Image.UnidentifiedImageError)
              else str(e))
    return None, Failure(reason, unreadable=False)
  return (resize(image, height, width) - mean) / std, None
