"""Stopping a run on SIGTERM or Ctrl-C: every process agrees on one step, saves it, exits 128+N.

A preemptible Cloud TPU slice sends SIGTERM to its hosts, often to one before the others;
Ctrl-C sends SIGINT. The handler only records the signal. Each train step carries this
process's record in its batch (`batch['stop']`, one int per example) and returns the maximum
over the global batch, so every process reads the same value from the same step's output,
and they all stop after the same step without an extra collective or host sync. The loop
reads that output when the dispatch limiter has waited for it (MAX_STEPS_AHEAD steps later).

The exit status is 128 + the signal number (143 for SIGTERM, 130 for SIGINT; SIGTERM wins
if both arrived), on every process, so a job scheduler does not take a preempted run as
finished. A second Ctrl-C interrupts at once (the default behaviour comes back).
"""

import signal

from absl import logging
import numpy as np

HANDLED = (signal.SIGTERM, signal.SIGINT)


def exit_status(signum):
  """The process exit status of a run stopped by `signum`."""
  return 128 + int(signum)


class StopRequest:
  """Records SIGTERM / SIGINT delivered to this process."""

  def __init__(self, action='saving a checkpoint at a step all processes agree on'):
    self.signum = 0
    self.action = action  # what happens before the stop, for the log line
    self._previous = {}

  def install(self):
    for sig in HANDLED:
      self._previous[sig] = signal.signal(sig, self._on_signal)
    return self

  def uninstall(self):
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)
    self._previous = {}

  def _on_signal(self, signum, frame):
    del frame
    if signum == signal.SIGINT and self.signum == signal.SIGINT:
      signal.signal(signal.SIGINT, signal.default_int_handler)
      raise KeyboardInterrupt
    self.signum = max(self.signum, int(signum))
    logging.warning(
        '%s received: %s, then stopping (exit status %d). Press Ctrl-C again to stop at once.',
        signal.Signals(signum).name,
        self.action,
        exit_status(self.signum),
    )

  def batch_field(self, local_batch_size):
    """This process's record as the batch entry `stop`."""
    return np.full((local_batch_size,), self.signum, np.int32)
