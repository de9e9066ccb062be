"""Stopping on request: Ctrl-C and SIGTERM alike.

SIGTERM is what `timeout`, `docker stop`, `kill` and job schedulers send.
Python's default for it ends the process at once, losing the training so far
without a word. Here it raises KeyboardInterrupt, as Ctrl-C does, so one path
serves both: training finishes its step, saves, says so. The exit code then
tells which signal came, as a shell reports it: 128 + its number (130 for
Ctrl-C, 143 for SIGTERM).

An exception raised from a signal handler lands at whatever bytecode runs
then: inside a finaliser, where Python prints and drops it, or between
taking a lock and the `try` that gives it back. TensorFlow's session lock
(lock_util.GroupLock) is taken and given back so, and the training loop
spends its life in it: a SIGTERM landing there left it taken, and the save
after training waited on it for ever (a sweep's run hung so in CI). So in
the loop the signal is only noted, and the loop stops at its next step
(`at_step_boundaries`).
"""

import contextlib
import signal

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)

_active = None  # The StopSignals this process is inside, if any.


class StopSignals:
  """While inside, SIGINT and SIGTERM raise KeyboardInterrupt (or, within
  `at_step_boundaries`, stop the loop at its next step); remembers the first
  that came. The handlers before are put back on the way out."""

  def __init__(self):
    self.received = None
    self.pending = False  # A stop asked for, not yet acted on.
    self.deferring = False
    self._previous = {}
    self._outer = None

  def __enter__(self):
    global _active
    self._previous = {signum: signal.signal(signum, self._stop)
                      for signum in STOP_SIGNALS}
    self._outer, _active = _active, self
    return self

  def __exit__(self, *exc_info):
    global _active
    _active = self._outer
    for signum, handler in self._previous.items():
      signal.signal(signum, handler)

  def _stop(self, signum, frame):
    del frame  # Unused.
    self.received = self.received or signum
    # Noted even when raised: should the exception be dropped, the training
    # loop still stops at its next step.
    self.pending = True
    if not self.deferring:
      raise KeyboardInterrupt

  @property
  def exit_code(self):
    return 128 + (self.received or signal.SIGINT)


class StepBoundary:
  """What a loop asks before each step: has a stop been requested?"""

  def __init__(self, signals):
    self._signals = signals

  @property
  def stop_requested(self):
    return self._signals is not None and self._signals.pending


@contextlib.contextmanager
def at_step_boundaries():
  """Inside, a stop signal only sets `stop_requested`, which the loop checks
  before each step and answers by raising KeyboardInterrupt itself. A stop
  that came during the last step is raised on the way out, as if it had
  come just after the loop, and one asked for before the loop whose
  exception was lost stops it at its first step.

  Outside StopSignals (a library caller), Python's own Ctrl-C still raises
  KeyboardInterrupt at once, and `stop_requested` stays False.
  """
  signals = _active
  if signals is None:
    yield StepBoundary(None)
    return
  signals.deferring = True
  try:
    yield StepBoundary(signals)
  finally:
    signals.deferring = False
    pending, signals.pending = signals.pending, False
  if pending:
    raise KeyboardInterrupt
