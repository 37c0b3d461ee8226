"""DispatchLimiter: how many steps it lets queue, and that it prevents XLA:CPU's deadlock."""

import os
import subprocess
import sys
import textwrap

import pytest

from vit_jax.runtime import step_queue

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# A 2-device data-parallel step (its gradient is all-reduced) dispatched in a loop whose host
# side is far faster than the step. The deadlock shows as an abort of the all-reduce
# rendezvous; the terminate timeout is lowered from 40 s to 3 s so that it shows quickly.
_LOOP = textwrap.dedent("""
    import sys
    import jax, jax.numpy as jnp
    from jax.sharding import NamedSharding, PartitionSpec as P
    from vit_jax.runtime import step_queue
    mesh = jax.make_mesh((2,), ('data',), axis_types=(jax.sharding.AxisType.Auto,))
    rep, dat = NamedSharding(mesh, P()), NamedSharding(mesh, P('data'))
    def step(w, x):
      g = jax.grad(lambda w: jnp.mean(jnp.tanh(x @ w) ** 2))(w)
      return w - 0.1 * g, jnp.sum(g)
    step = jax.jit(step, in_shardings=(rep, dat), out_shardings=(rep, rep), donate_argnums=0)
    w = jax.device_put(jnp.full((64, 64), 0.01), rep)
    x = jax.device_put(jnp.ones((64, 64)), dat)
    limit = step_queue.DispatchLimiter() if sys.argv[1] == 'limited' else (lambda out: None)
    for _ in range(3000):
      w, g = step(w, x)
      limit(g)
    jax.block_until_ready(w)
    print('finished 3000 steps')
""")


def _run_loop(mode):
  env = dict(
      os.environ,
      JAX_PLATFORMS='cpu',
      XLA_FLAGS=(
          '--xla_force_host_platform_device_count=2 '
          '--xla_cpu_collective_call_warn_stuck_timeout_seconds=1 '
          '--xla_cpu_collective_call_terminate_timeout_seconds=3'
      ),
  )
  return subprocess.run(
      [sys.executable, '-c', _LOOP, mode],
      cwd=ROOT,
      env=env,
      capture_output=True,
      text=True,
      timeout=180,
  )


@pytest.mark.slow
def test_limited_loop_finishes_where_unbounded_loop_deadlocks():
  limited = _run_loop('limited')
  assert limited.returncode == 0, limited.stderr[-3000:]
  assert 'finished 3000 steps' in limited.stdout
  # The control shows that the harness reproduces the deadlock the limiter exists for. If a
  # newer jaxlib no longer deadlocks here, the limiter is no longer needed on CPU.
  unbounded = _run_loop('unbounded')
  assert unbounded.returncode != 0, 'unbounded dispatch no longer deadlocks XLA:CPU'
  assert 'Termination timeout' in unbounded.stderr, unbounded.stderr[-3000:]


class _Output:
  """Stands in for a step's output array; records when the loop waits for it."""

  def __init__(self, index, waited):
    self.index, self._waited = index, waited

  def block_until_ready(self):
    self._waited.append(self.index)
    return self


def test_waits_for_the_step_max_ahead_back():
  waited = []
  limit = step_queue.DispatchLimiter(max_ahead=3)
  for i in range(6):
    limit(_Output(i, waited))
    # After step i is dispatched at most 3 steps are unfinished: i-2, i-1, i.
    assert waited == list(range(max(0, i - 2)))


def test_rejects_a_bound_below_one():
  with pytest.raises(ValueError, match='max_ahead=0'):
    step_queue.DispatchLimiter(max_ahead=0)
