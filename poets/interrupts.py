"""Stopping on request: Ctrl-C and SIGTERM alike.

SIGTERM is what `timeout`, `docker stop`, `kill` and job schedulers send.
Python's default for it ends the process at once, losing the training so far
without a word. Here it raises KeyboardInterrupt, as Ctrl-C does, so one path
serves both: training finishes its step, saves, says so. The exit code then
tells which signal came, as a shell reports it: 128 + its number (130 for
Ctrl-C, 143 for SIGTERM).
"""

import signal

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class StopSignals:
  """Makes SIGINT and SIGTERM raise KeyboardInterrupt; remembers the first."""

  def __init__(self):
    self.received = None

  def install(self):
    for signum in STOP_SIGNALS:
      signal.signal(signum, self._stop)
    return self

  def _stop(self, signum, frame):
    del frame  # Unused.
    self.received = self.received or signum
    raise KeyboardInterrupt

  @property
  def exit_code(self):
    return 128 + (self.received or signal.SIGINT)
