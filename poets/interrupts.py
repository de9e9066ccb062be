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
  """While inside, SIGINT and SIGTERM raise KeyboardInterrupt; remembers the
  first that came. The handlers before are put back on the way out."""

  def __init__(self):
    self.received = None
    self._previous = {}

  def __enter__(self):
    self._previous = {signum: signal.signal(signum, self._stop)
                      for signum in STOP_SIGNALS}
    return self

  def __exit__(self, *exc_info):
    for signum, handler in self._previous.items():
      signal.signal(signum, handler)

  def _stop(self, signum, frame):
    del frame  # Unused.
    self.received = self.received or signum
    raise KeyboardInterrupt

  @property
  def exit_code(self):
    return 128 + (self.received or signal.SIGINT)
