"""Progress of a long loop: a bar on a terminal, a few plain lines in a log.

tqdm redraws its bar with carriage returns, which a terminal turns into one
moving line but a log file keeps as one endless line. When stderr is not a
terminal the bar is replaced by a log line at every tenth of the way (at most
one every few seconds) and one at the end.
"""

import sys
import time

from absl import logging
from tqdm import tqdm

MIN_SECONDS_BETWEEN_LINES = 5.0


class LoggedProgress:
  """The stand-in for a tqdm bar in a log file: `update(n)` as tqdm's."""

  def __init__(self, total, desc, unit,
               min_seconds=MIN_SECONDS_BETWEEN_LINES):
    self.total = total
    self.desc = desc
    self.unit = unit
    self.min_seconds = min_seconds
    self.count = 0
    self._start = time.monotonic()
    self._last_line = self._start
    self._tenths_logged = 0

  def update(self, n=1):
    self.count += n
    now = time.monotonic()
    tenths = self.count * 10 // max(self.total, 1)
    finished = self.count >= self.total
    if finished or (tenths > self._tenths_logged and
                    now - self._last_line >= self.min_seconds):
      self._tenths_logged = tenths
      self._last_line = now
      seconds = now - self._start
      logging.info('%s: %d/%d %s (%d%%) in %.1f s, %.1f %s/s', self.desc,
                   self.count, self.total, self.unit,
                   100 * self.count // max(self.total, 1), seconds,
                   self.count / max(seconds, 1e-9), self.unit)

  def __enter__(self):
    return self

  def __exit__(self, *exc_info):
    return False


def progress(total, desc, unit):
  """A tqdm bar when stderr is a terminal, else a LoggedProgress."""
  if sys.stderr.isatty():
    return tqdm(total=total, desc=desc, unit=unit, smoothing=0.1)
  return LoggedProgress(total, desc, unit)
