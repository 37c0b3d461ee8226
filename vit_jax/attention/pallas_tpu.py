"""Pallas TPU flash attention: `impl='pallas'`, and the per-block kernel of the sharded
schedules on TPU (`kernel='pallas'`).

The kernels are JAX's own (jax.experimental.pallas.ops.tpu.flash_attention). This file wraps
their forward and two backward kernels in one custom_vjp of its own, for two reasons: the ring
schedule needs a block's (output, logsumexp) forward and a backward that takes the *global*
logsumexp (p = exp(s - lse) with l = 1), which the public entry point does not expose; and on
a machine without a TPU every kernel (the backward ones too, traced later by autodiff) must be
traced under interpret mode, which only a custom_vjp of our own can arrange. The private
kernel functions are pinned by setup.py's jax range; tests/test_attention_kernels.py checks
them against the dense reference in interpret mode.

Layout here is [batch, heads, length, head_dim]; key masks are [batch, keys] booleans, passed
to the kernel as segment ids (queries 1, keys 1 or 0), so masked keys get the kernel's finite
mask value as our blockwise code does. Lengths must be multiples of the kernel block (a
multiple of TPU's 128 lanes): `kernel_block` picks it and the caller pads.
"""

import contextlib
import functools

import jax
from jax.experimental.pallas import tpu as pltpu
from jax.experimental.pallas.ops.tpu import flash_attention as tpu_flash
import jax.numpy as jnp

from vit_jax.attention import select

LANES = 128


def _round_up(x, multiple):
  return -(-x // multiple) * multiple


def kernel_block(length, block_size):
  """(block, padded length): the kernel block, a multiple of 128 lanes and at most
  `block_size` (rounded up to 128), that pads `length` least (the larger block on ties);
  e.g. 785 tokens -> 7 blocks of 128 (896), not 2 of 512 (1024)."""
  candidates = range(LANES, _round_up(min(block_size, length), LANES) + 1, LANES)
  block = min(candidates, key=lambda b: (_round_up(length, b), -b))
  return block, _round_up(length, block)


def _kernel_context():
  """Compiled Mosaic kernels on TPU; elsewhere Pallas' HLO interpreter (for tests)."""
  if select.platform() == 'tpu':
    return contextlib.nullcontext()
  return pltpu.force_tpu_interpret_mode(True)  # True: the HLO interpreter, not a TPU simulator


def _segments(q, kmask):
  return tpu_flash.SegmentIds(
      q=jnp.ones(q.shape[:1] + q.shape[2:3], jnp.int32), kv=kmask.astype(jnp.int32)
  )


def block_forward(q, k, v, kmask, block):
  """(output in q's dtype, normalised over these keys; logsumexp in float32 [b, h, Lq])."""
  # The scope names the kernel's HLO instruction `flash_attention` (vit_jax/perf/hlo_flops.py
  # counts its FLOPs by that name); the backward kernels carry their own names.
  with _kernel_context(), jax.named_scope('flash_attention'):
    out, l, m = tpu_flash._flash_attention_impl(
        q,
        k,
        v,
        None,
        _segments(q, kmask),
        True,
        False,
        q.shape[-1] ** -0.5,
        1,
        block,
        block,
        block,
        False,
    )
  return out, m + jnp.log(l)


def block_backward(q, k, v, kmask, do, lse, delta, block):
  """(dq, dk, dv) of these keys given the *global* logsumexp and delta = sum(do * out)."""
  common = dict(
      sm_scale=q.shape[-1] ** -0.5,
      causal=False,
      mask_value=tpu_flash.DEFAULT_MASK_VALUE,
      debug=False,
  )
  ones = jnp.ones_like(lse)
  segments = _segments(q, kmask)
  with _kernel_context():
    dk, dv = tpu_flash._flash_attention_bwd_dkv(
        q,
        k,
        v,
        None,
        segments,
        ones,
        lse,
        do,
        delta,
        block_q_major=block,
        block_q=block,
        block_k_major=block,
        block_k=block,
        **common,
    )
    dq, _ = tpu_flash._flash_attention_bwd_dq(
        q,
        k,
        v,
        None,
        segments,
        ones,
        lse,
        do,
        delta,
        block_q_major=block,
        block_k_major=block,
        block_k=block,
        **common,
    )
  return dq, dk, dv


@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def flash_attention(q, k, v, kmask, block):
  """Attention on [b, L, h, d] with a [b, Lk] key mask; L and Lk multiples of `block`."""
  return _flash_fwd(q, k, v, kmask, block)[0]


def _heads(x):
  return jnp.swapaxes(x, 1, 2)  # [b, l, h, d] <-> [b, h, l, d]


def _flash_fwd(q, k, v, kmask, block):
  out, lse = block_forward(_heads(q), _heads(k), _heads(v), kmask, block)
  out = _heads(out)
  return out, (q, k, v, kmask, out, lse)


def _flash_bwd(block, residuals, dout):
  q, k, v, kmask, out, lse = residuals
  delta = jnp.sum(_heads(dout).astype(jnp.float32) * _heads(out).astype(jnp.float32), -1)
  dq, dk, dv = block_backward(
      _heads(q), _heads(k), _heads(v), kmask, _heads(dout).astype(q.dtype), lse, delta, block
  )
  return _heads(dq), _heads(dk), _heads(dv), None


flash_attention.defvjp(_flash_fwd, _flash_bwd)
