"""Blockwise (flash-style) attention: the building blocks every schedule shares.

Keys and values are visited in blocks; the softmax is accumulated online in float32
(running max `m`, running sum `l`, unnormalised output `o`). The backward pass recomputes each
block's probabilities from the saved (q, k, v, out, logsumexp), so memory stays linear in the
sequence length instead of storing an [L, L] matrix or every scan step's carry.

Internal layout is [batch, heads, length, head_dim]; key masks are [batch, length] booleans.
"""

import functools

import jax
import jax.numpy as jnp

from vit_jax.attention.core import MASK_VALUE

F32 = jnp.float32


def scores(q, k, kmask, scale):
  """Masked logits [b, h, q, k] in float32 for one key block."""
  s = jnp.einsum('bhqd,bhkd->bhqk', q, k, preferred_element_type=F32) * scale
  return jnp.where(kmask[:, None, None, :], s, MASK_VALUE)


def init_carry(q):
  b, h, n, d = q.shape
  return (
      jnp.zeros((b, h, n, d), F32),
      jnp.full((b, h, n), -jnp.inf, F32),
      jnp.zeros((b, h, n), F32),
  )


def forward_block(carry, q, k, v, kmask, scale):
  """Folds one key/value block into the running (o, m, l)."""
  o, m, l = carry
  s = scores(q, k, kmask, scale)
  m_new = jnp.maximum(m, s.max(-1))
  correction = jnp.exp(m - m_new)
  p = jnp.exp(s - m_new[..., None])
  l = l * correction + p.sum(-1)
  o = o * correction[..., None] + jnp.einsum(
      'bhqk,bhkd->bhqd', p.astype(v.dtype), v, preferred_element_type=F32
  )
  return o, m_new, l


def finalize(carry):
  """(normalised output in float32, logsumexp) from the running (o, m, l)."""
  o, m, l = carry
  return o / l[..., None], m + jnp.log(l)


def backward_block(q, k, v, kmask, do, lse, delta, scale):
  """Gradient contributions of one key block: (dq part, dk block, dv block)."""
  p = jnp.exp(scores(q, k, kmask, scale) - lse[..., None])
  dv = jnp.einsum('bhqk,bhqd->bhkd', p, do, preferred_element_type=F32)
  dp = jnp.einsum('bhqd,bhkd->bhqk', do, v, preferred_element_type=F32)
  ds = p * (dp - delta[..., None])
  dq = jnp.einsum('bhqk,bhkd->bhqd', ds, k, preferred_element_type=F32) * scale
  dk = jnp.einsum('bhqk,bhqd->bhkd', ds, q, preferred_element_type=F32) * scale
  return dq, dk, dv


def _blocks(x, block, axis):
  """Splits `axis` into [num_blocks, block] and moves num_blocks to the front."""
  shape = x.shape[:axis] + (x.shape[axis] // block, block) + x.shape[axis + 1 :]
  return jnp.moveaxis(x.reshape(shape), axis, 0)


def _unblocks(x, axis):
  x = jnp.moveaxis(x, 0, axis)
  return x.reshape(x.shape[:axis] + (x.shape[axis] * x.shape[axis + 1],) + x.shape[axis + 2 :])


def chunk_forward(carry, q, k, v, kmask, block, scale):
  """Folds a whole key/value chunk (a multiple of `block` long) into the carry."""

  def step(c, kv):
    return forward_block(c, q, *kv, scale), None

  carry, _ = jax.lax.scan(
      step, carry, (_blocks(k, block, 2), _blocks(v, block, 2), _blocks(kmask, block, 1))
  )
  return carry


def chunk_backward(q, k, v, kmask, do, lse, delta, block, scale):
  """(dq, dk, dv) of a whole key/value chunk, block by block."""

  def step(dq, kv):
    dq_part, dk, dv = backward_block(q, *kv, do, lse, delta, scale)
    return dq + dq_part, (dk, dv)

  dq, (dk, dv) = jax.lax.scan(
      step,
      jnp.zeros(q.shape, F32),
      (_blocks(k, block, 2), _blocks(v, block, 2), _blocks(kmask, block, 1)),
  )
  return dq, _unblocks(dk, 2), _unblocks(dv, 2)


def to_heads(x):
  return jnp.swapaxes(x, 1, 2)  # [b, l, h, d] <-> [b, h, l, d]


@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def blockwise_attention(q, k, v, kmask, block):
  """Attention on [b, L, h, d] with a [b, Lk] key mask; Lk must be a multiple of `block`."""
  return _blockwise_fwd(q, k, v, kmask, block)[0]


def _blockwise_fwd(q, k, v, kmask, block):
  scale = q.shape[-1] ** -0.5
  qh, kh, vh = to_heads(q), to_heads(k), to_heads(v)
  out, lse = finalize(chunk_forward(init_carry(qh), qh, kh, vh, kmask, block, scale))
  out = to_heads(out).astype(q.dtype)
  return out, (q, k, v, kmask, out, lse)


def _blockwise_bwd(block, residuals, dout):
  q, k, v, kmask, out, lse = residuals
  scale = q.shape[-1] ** -0.5
  do = to_heads(dout).astype(F32)
  delta = jnp.sum(do * to_heads(out).astype(F32), axis=-1)
  dq, dk, dv = chunk_backward(
      to_heads(q), to_heads(k), to_heads(v), kmask, do, lse, delta, block, scale
  )
  return (
      to_heads(dq).astype(q.dtype),
      to_heads(dk).astype(k.dtype),
      to_heads(dv).astype(v.dtype),
      None,
  )


blockwise_attention.defvjp(_blockwise_fwd, _blockwise_bwd)
