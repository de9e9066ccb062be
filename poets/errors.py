"""The one exception type for mistakes a user can make and fix.

Library code raises `PoetsError` with a message that names the file or flag at
fault and what to do about it; `retrain.py` and `label_image.py` catch it once
and print it as a single line, without a traceback.
"""


class PoetsError(Exception):
  """A problem with the user's input, files or environment, not a bug."""


def first_line(error):
  """The first line of an error (TensorFlow's run on for pages), for a
  one-line message; the error's type when it says nothing."""
  lines = str(error).strip().splitlines()
  return lines[0] if lines else type(error).__name__
