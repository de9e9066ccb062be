"""Stopping on request: Ctrl-C and SIGTERM alike, in every script.

SIGTERM is what `timeout`, `docker stop`, `kill` and job schedulers send;
Python's default for it ends the process at once, losing the training so far
without a word. Inside StopSignals both are a request to stop: by default
they raise KeyboardInterrupt, as Ctrl-C does, so one path serves both
(training finishes its step, saves, says so). The exit code then tells which
signal came, as a shell reports it: 128 + its number (130 for Ctrl-C, 143
for SIGTERM).

Two places take the request without an exception. A training loop, inside
`at_step_boundaries`, only notes it and stops before its next step: an
exception raised from a signal handler lands at whatever bytecode runs then,
possibly between taking TensorFlow's session lock and the `try` that gives
it back, and the save after training would then wait on that lock for ever.
A sweep (`StopSignals(pass_on=True)`) never raises: it passes each signal on
to the run it watches and starts no further run, so its table is still
written.
"""

import contextlib
import signal

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)

_active = None  # The StopSignals this process is inside, if any.


class StopSignals:
  """While inside, SIGINT and SIGTERM are stop requests; remembers the first
  that came. They raise KeyboardInterrupt, except within
  `at_step_boundaries` (the loop stops at its next step) and with
  `pass_on`, where each goes on to the `watch`ed child process instead. The
  handlers before are put back on the way out."""

  def __init__(self, pass_on=False):
    self.received = None  # The first stop signal, once one came.
    self.count = 0  # How many came.
    self.pending = False  # A stop asked for, not yet acted on.
    self.deferring = pass_on
    self.child = None  # With pass_on: the process signals go on to.
    self._last = None
    self._previous = {}
    self._outer = None

  def __enter__(self):
    global _active
    self._previous = {signum: signal.signal(signum, self)
                      for signum in STOP_SIGNALS}
    self._outer, _active = _active, self
    return self

  def __exit__(self, *exc_info):
    global _active
    _active = self._outer
    for signum, handler in self._previous.items():
      signal.signal(signum, handler)

  def __call__(self, signum, frame):
    """The signal handler."""
    del frame  # Unused.
    self.received = self.received or signum
    self.count += 1
    self._last = signum
    # Noted even when raised: should the exception be dropped (raised in a
    # finaliser), the training loop still stops at its next step.
    self.pending = True
    self._pass_on(signum)
    if not self.deferring:
      raise KeyboardInterrupt

  def _pass_on(self, signum):
    if self.child is not None and self.child.poll() is None:
      self.child.send_signal(signum)

  def watch(self, child):
    """Passes signals on to `child` (a Popen) from now on, and the last one
    that came, should it have come while the child was starting."""
    self.child = child
    if self._last is not None:
      self._pass_on(self._last)

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
  deferring, signals.deferring = signals.deferring, True
  try:
    yield StepBoundary(signals)
  finally:
    signals.deferring = deferring
    pending, signals.pending = signals.pending, False
  if pending:
    raise KeyboardInterrupt
