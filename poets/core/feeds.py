"""NumPy arrays that TensorFlow can be fed without copying them.

TensorFlow takes a fed NumPy array without a copy only when its data starts
on a 64-byte boundary (Eigen's alignment); NumPy's are 16-byte. Bottlenecks
are made into such an array and training feeds all of them at every step, so
a copy would cost their size in memory and time at each one.
"""

import numpy as np

FEED_ALIGNMENT = 64


def feedable_empty(shape, dtype=np.float32):
  """An uninitialised array TensorFlow can be fed without a copy."""
  dtype = np.dtype(dtype)
  size = int(np.prod(shape)) * dtype.itemsize
  raw = np.empty(size + FEED_ALIGNMENT, np.uint8)
  start = -raw.ctypes.data % FEED_ALIGNMENT
  return raw[start:start + size].view(dtype).reshape(shape)


def feedable(values):
  """`values`, or a copy TensorFlow can be fed without copying it again."""
  if (values.ctypes.data % FEED_ALIGNMENT == 0 and
      values.flags.c_contiguous):
    return values
  aligned = feedable_empty(values.shape, values.dtype)
  aligned[...] = values
  return aligned
