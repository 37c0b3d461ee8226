"""Sequence-sharded attention over the mesh axis `seq`: ring, all-gather and Ulysses.

Each runs inside `jax.shard_map` with queries, keys and values laid out
P(batch_axes, 'seq', None, None) and reuses the blockwise building blocks (or, on TPU, the
Pallas flash kernels of pallas_tpu.py, as MaxText's context parallelism does), so all
schedules compute the same numbers as `blockwise`:
- ring: key/value chunks travel around the ring with `ppermute`; each device attends its
  queries to the chunk at hand and merges the result into its running output by logsumexp;
  the custom backward rotates k, v and their gradient accumulators the same way (each chunk's
  gradients computed with the global logsumexp), so dk and dv arrive home after a full turn.
- allgather: keys and values are all-gathered, queries stay local; the autodiff transpose of
  the gather reduce-scatters their gradients back.
- ulysses: all-to-all from sequence-sharded to head-sharded, attention over the whole sequence
  for the local heads, and back.
"""

import functools

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

from vit_jax.attention import blockwise as bw
from vit_jax.attention import pallas_tpu

SEQ = 'seq'


def _ring_permute(xs, n):
  perm = [(i, (i + 1) % n) for i in range(n)]
  return [jax.lax.ppermute(x, SEQ, perm) for x in xs]


def _xla_forward(qh, kh, vh, kmask, block):
  return bw.finalize(
      bw.chunk_forward(bw.init_carry(qh), qh, kh, vh, kmask, block, qh.shape[-1] ** -0.5)
  )


def _xla_backward(qh, kh, vh, kmask, do, lse, delta, block):
  return bw.chunk_backward(qh, kh, vh, kmask, do, lse, delta, block, qh.shape[-1] ** -0.5)


def _pallas_backward(qh, kh, vh, kmask, do, lse, delta, block):
  grads = pallas_tpu.block_backward(qh, kh, vh, kmask, do.astype(qh.dtype), lse, delta, block)
  return [g.astype(bw.F32) for g in grads]


# A chunk's (normalised output, logsumexp) and its gradients given the global logsumexp, on
# [b, h, l, d]: XLA's blockwise code, or the Pallas TPU kernels.
_CHUNK_KERNELS = {
    False: (_xla_forward, _xla_backward),
    True: (pallas_tpu.block_forward, _pallas_backward),
}


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5, 6))
def _ring_local(q, k, v, kmask, block, n, pallas):
  return _ring_fwd(q, k, v, kmask, block, n, pallas)[0]


def _ring_fwd(q, k, v, kmask, block, n, pallas):
  chunk_forward = _CHUNK_KERNELS[pallas][0]
  qh = bw.to_heads(q)

  def step(state, _):
    (o, lse), kv = state
    o_chunk, lse_chunk = chunk_forward(qh, bw.to_heads(kv[0]), bw.to_heads(kv[1]), kv[2], block)
    merged = jnp.logaddexp(lse, lse_chunk)
    o = (
        o * jnp.exp(lse - merged)[..., None]
        + o_chunk.astype(bw.F32) * jnp.exp(lse_chunk - merged)[..., None]
    )
    return ((o, merged), _ring_permute(kv, n)), None

  start = (jnp.zeros(qh.shape, bw.F32), jnp.full(qh.shape[:3], -jnp.inf, bw.F32))
  ((out, lse), _), _ = jax.lax.scan(step, (start, [k, v, kmask]), None, length=n)
  out = bw.to_heads(out).astype(q.dtype)
  return out, (q, k, v, kmask, out, lse)


def _ring_bwd(block, n, pallas, residuals, dout):
  q, k, v, kmask, out, lse = residuals
  chunk_backward = _CHUNK_KERNELS[pallas][1]
  qh = bw.to_heads(q)
  do = bw.to_heads(dout).astype(bw.F32)
  delta = jnp.sum(do * bw.to_heads(out).astype(bw.F32), axis=-1)

  def step(state, _):
    dq, travelling = state
    k_cur, v_cur, m_cur, dk_acc, dv_acc = travelling
    dq_part, dk, dv = chunk_backward(
        qh, bw.to_heads(k_cur), bw.to_heads(v_cur), m_cur, do, lse, delta, block
    )
    travelling = [k_cur, v_cur, m_cur, dk_acc + bw.to_heads(dk), dv_acc + bw.to_heads(dv)]
    return (dq + dq_part, _ring_permute(travelling, n)), None

  zeros = jnp.zeros(k.shape, bw.F32)
  (dq, (_, _, _, dk, dv)), _ = jax.lax.scan(
      step, (jnp.zeros(qh.shape, bw.F32), [k, v, kmask, zeros, zeros]), None, length=n
  )
  return (bw.to_heads(dq).astype(q.dtype), dk.astype(k.dtype), dv.astype(v.dtype), None)


_ring_local.defvjp(_ring_fwd, _ring_bwd)


def _full_attention(pallas):
  """Whole-sequence attention on [b, L, h, d] with its own backward: kernel or blockwise."""
  return pallas_tpu.flash_attention if pallas else bw.blockwise_attention


def _allgather_local(q, k, v, kmask, block, n, pallas):
  del n
  gather = lambda x: jax.lax.all_gather(x, SEQ, axis=1, tiled=True)
  return _full_attention(pallas)(q, gather(k), gather(v), gather(kmask), block)


def _ulysses_local(q, k, v, kmask, block, n, pallas):
  del n
  to_heads = lambda x: jax.lax.all_to_all(x, SEQ, split_axis=2, concat_axis=1, tiled=True)
  out = _full_attention(pallas)(
      to_heads(q),
      to_heads(k),
      to_heads(v),
      jax.lax.all_gather(kmask, SEQ, axis=1, tiled=True),
      block,
  )
  return jax.lax.all_to_all(out, SEQ, split_axis=1, concat_axis=2, tiled=True)


SCHEDULES = {'ring': _ring_local, 'allgather': _allgather_local, 'ulysses': _ulysses_local}


def batch_axes(mesh, batch):
  """Mesh axes the batch is split over: data and fsdp when present and they divide it."""
  axes = tuple(a for a in ('data', 'fsdp') if a in mesh.axis_names and mesh.shape[a] > 1)
  size = 1
  for a in axes:
    size *= mesh.shape[a]
  return axes if axes and batch % size == 0 else ()


def sharded_attention(impl, q, k, v, kmask, block, mesh, pallas=False):
  """Runs schedule `impl` on global [b, L, h, d] arrays; L divisible by seq size x block.

  pallas: each device's work runs on the Pallas TPU kernels (block a multiple of 128).
  """
  n = mesh.shape[SEQ]
  spec = P(batch_axes(mesh, q.shape[0]) or None, SEQ, None, None)
  mask_spec = P(spec[0], SEQ)
  schedule = SCHEDULES[impl]
  return jax.shard_map(
      lambda q, k, v, m: schedule(q, k, v, m, block, n, pallas),
      mesh=mesh,
      in_specs=(spec, spec, spec, mask_spec),
      out_specs=spec,
      check_vma=False,
  )(q, k, v, kmask)


def batch_sharded_kernel(q, k, v, kmask, block, mesh):
  """The Pallas kernel on global [b, L, h, d] arrays under a mesh, split over the batch axes
  only (a Mosaic kernel cannot be partitioned automatically)."""
  spec = P(batch_axes(mesh, q.shape[0]) or None, None, None, None)
  return jax.shard_map(
      lambda q, k, v, m: pallas_tpu.flash_attention(q, k, v, m, block),
      mesh=mesh,
      in_specs=(spec, spec, spec, P(spec[0], None)),
      out_specs=spec,
      check_vma=False,
  )(q, k, v, kmask)


def constrain_tokens(x, impl):
  """Lays [b, L, D] activations out as P(batch_axes, 'seq', None) for sharded schedules
  (and for 'auto', which picks ring when the 'seq' axis is larger than 1).

  Outside attention everything (LayerNorm, MLP, residuals) then stays local to each sequence
  shard; a no-op without a mesh, for other schedules, or when L does not divide.
  """
  if impl not in SCHEDULES and impl != 'auto':
    return x
  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty or SEQ not in mesh.axis_names or x.shape[1] % mesh.shape[SEQ]:
    return x
  if impl == 'auto' and mesh.shape[SEQ] == 1:  # auto shards tokens only over a real seq axis
    return x
  return jax.lax.with_sharding_constraint(x, P(batch_axes(mesh, x.shape[0]) or None, SEQ, None))
