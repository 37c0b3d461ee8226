"""Compiled memory of attention schedules (nothing is run): for benchmarks and notebooks."""

import jax
import jax.numpy as jnp

from vit_jax import attention


def seq_mesh(devices):
  """A mesh with only a 'seq' axis over the first `devices` devices."""
  return jax.make_mesh(
      (devices,),
      ('seq',),
      axis_types=(jax.sharding.AxisType.Auto,),
      devices=jax.devices()[:devices],
  )


def fwd_bwd_temp_bytes(
    impl, length, *, heads=3, head_dim=64, batch=1, block_size=512, devices=1, dtype=jnp.float32
):
  """Per-device temporary bytes of attention forward + backward, from XLA's analysis."""
  shape = jax.ShapeDtypeStruct((batch, length, heads, head_dim), dtype)

  def loss(q, k, v):
    out = attention.dot_product_attention(q, k, v, impl=impl, block_size=block_size)
    return jnp.sum(out.astype(jnp.float32))

  grads = jax.grad(loss, argnums=(0, 1, 2))
  with jax.set_mesh(seq_mesh(devices)):
    compiled = jax.jit(grads).lower(shape, shape, shape).compile()
  return compiled.memory_analysis().temp_size_in_bytes
