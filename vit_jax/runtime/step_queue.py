"""A bound on how many train steps are dispatched ahead of the device.

jax dispatches asynchronously, so a loop whose input is faster than its step queues more and
more steps. On XLA:CPU with several devices (jaxlib 0.10.2) that deadlocks once a device has
more than 32 computations queued: launches then wait on the device's in-flight semaphore in
a thread pool that does not keep their order, one device enters step k's all-reduce while the
other's step k waits behind later steps, and after 40 s the all-reduce rendezvous aborts the
process ("Termination timeout for `all reduce ...`"). Measured here with 2 CPU devices: a
loop of a 2-device step aborted within 200 steps every time when unbounded or 64 ahead, and
ran 3,000 steps when 32 or fewer ahead (tests/test_step_queue.py keeps that check).

Waiting for the step MAX_STEPS_AHEAD back keeps work queued to hide the host's dispatch and
input time and changes no numbers (measured on CPU only: 2, 4 and 8 ahead ran within the
run-to-run noise of one another).
"""

import collections

import jax

MAX_STEPS_AHEAD = 8


class DispatchLimiter:
  """Call with the outputs of each dispatched step; blocks while too many are queued.

  Returns the outputs it waited for (oldest first): the train loop reads values that every
  process must agree on (the stop request) from these, at the same iteration everywhere.
  """

  def __init__(self, max_ahead=MAX_STEPS_AHEAD):
    if max_ahead < 1:
      raise ValueError(f'max_ahead={max_ahead} must be at least 1 step.')
    self._max_ahead = max_ahead
    self._queued = collections.deque()

  def __call__(self, step_output):
    self._queued.append(step_output)
    done = []
    while len(self._queued) > self._max_ahead:
      done.append(jax.block_until_ready(self._queued.popleft()))
    return done
