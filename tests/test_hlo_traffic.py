"""hlo_traffic: XLA's own 'bytes accessed' where it is right, and loops charged per trip."""

import jax
import jax.numpy as jnp

from vit_jax.perf import hlo_traffic


def _compiled(fn, *args):
  return jax.jit(fn).lower(*args).compile()


def test_loop_free_program_equals_xla_cost_analysis():
  compiled = _compiled(
      lambda x, w: jnp.tanh(x @ w).sum(), jnp.ones((128, 256)), jnp.ones((256, 256))
  )
  assert hlo_traffic.count(compiled) == compiled.cost_analysis()['bytes accessed']


def test_scan_reads_every_layer_once_per_trip():
  def layers(x, w):
    return jax.lax.scan(lambda c, wi: (jnp.tanh(c @ wi), None), x, w)[0].sum()

  x, w = jnp.ones((128, 256)), jnp.ones((12, 256, 256))
  compiled = _compiled(layers, x, w)
  every_weight_once = w.size * 4
  assert compiled.cost_analysis()['bytes accessed'] < every_weight_once  # the body once
  traffic = hlo_traffic.count(compiled)
  # At least every weight once; but only the slice a step reads is charged, not all 12.
  assert every_weight_once < traffic < 12 * every_weight_once


def test_scan_writing_stacked_outputs_is_charged_the_slices_it_writes():
  """lax.scan's ys (activations saved per layer) are updated in place, a layer at a time."""

  def layers(x, w):
    def step(c, wi):
      y = jnp.tanh(c @ wi)
      return y, y

    return jax.lax.scan(step, x, w)[1]

  x, w = jnp.ones((128, 256)), jnp.ones((12, 256, 256))
  compiled = _compiled(layers, x, w)
  stacked = 12 * 128 * 256 * 4  # the [12, 128, 256] output
  traffic = hlo_traffic.count(compiled)
  # Reading and writing the whole stack at each of the 12 steps alone would be 24 x stacked.
  assert stacked < traffic < 24 * stacked
