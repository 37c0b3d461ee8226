"""Sequence-sharded attention over the mesh axis `seq`: ring, all-gather and Ulysses.

Each runs inside `jax.shard_map` with queries, keys and values laid out
P(batch_axes, 'seq', None, None) and reuses the blockwise building blocks, so all schedules
compute the same numbers as `blockwise`:
- ring: key/value chunks travel around the ring with `ppermute` while each device folds them
  into its queries' online softmax; the custom backward rotates k, v and their gradient
  accumulators the same way, so dk and dv arrive home after a full turn.
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

SEQ = 'seq'


def _ring_permute(xs, n):
  perm = [(i, (i + 1) % n) for i in range(n)]
  return [jax.lax.ppermute(x, SEQ, perm) for x in xs]


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5))
def _ring_local(q, k, v, kmask, block, n):
  return _ring_fwd(q, k, v, kmask, block, n)[0]


def _ring_fwd(q, k, v, kmask, block, n):
  scale = q.shape[-1] ** -0.5
  qh = bw.to_heads(q)

  def step(state, _):
    carry, kv = state
    carry = bw.chunk_forward(carry, qh, bw.to_heads(kv[0]), bw.to_heads(kv[1]), kv[2],
                             block, scale)
    return (carry, _ring_permute(kv, n)), None
  (carry, _), _ = jax.lax.scan(step, (bw.init_carry(qh), [k, v, kmask]), None, length=n)
  out, lse = bw.finalize(carry)
  out = bw.to_heads(out).astype(q.dtype)
  return out, (q, k, v, kmask, out, lse)


def _ring_bwd(block, n, residuals, dout):
  q, k, v, kmask, out, lse = residuals
  scale = q.shape[-1] ** -0.5
  qh = bw.to_heads(q)
  do = bw.to_heads(dout).astype(bw.F32)
  delta = jnp.sum(do * bw.to_heads(out).astype(bw.F32), axis=-1)

  def step(state, _):
    dq, travelling = state
    k_cur, v_cur, m_cur, dk_acc, dv_acc = travelling
    dq_part, dk, dv = bw.chunk_backward(qh, bw.to_heads(k_cur), bw.to_heads(v_cur), m_cur,
                                        do, lse, delta, block, scale)
    travelling = [k_cur, v_cur, m_cur, dk_acc + bw.to_heads(dk), dv_acc + bw.to_heads(dv)]
    return (dq + dq_part, _ring_permute(travelling, n)), None
  zeros = jnp.zeros(k.shape, bw.F32)
  (dq, (_, _, _, dk, dv)), _ = jax.lax.scan(
      step, (jnp.zeros(qh.shape, bw.F32), [k, v, kmask, zeros, zeros]), None, length=n)
  return (bw.to_heads(dq).astype(q.dtype), dk.astype(k.dtype), dv.astype(v.dtype), None)


_ring_local.defvjp(_ring_fwd, _ring_bwd)


def _allgather_local(q, k, v, kmask, block, n):
  del n
  gather = lambda x: jax.lax.all_gather(x, SEQ, axis=1, tiled=True)
  return bw.blockwise_attention(q, gather(k), gather(v), gather(kmask), block)


def _ulysses_local(q, k, v, kmask, block, n):
  del n
  to_heads = lambda x: jax.lax.all_to_all(x, SEQ, split_axis=2, concat_axis=1, tiled=True)
  out = bw.blockwise_attention(to_heads(q), to_heads(k), to_heads(v),
                               jax.lax.all_gather(kmask, SEQ, axis=1, tiled=True), block)
  return jax.lax.all_to_all(out, SEQ, split_axis=1, concat_axis=2, tiled=True)


SCHEDULES = {'ring': _ring_local, 'allgather': _allgather_local, 'ulysses': _ulysses_local}


def batch_axes(mesh, batch):
  """Mesh axes the batch is split over: data and fsdp when present and they divide it."""
  axes = tuple(a for a in ('data', 'fsdp') if a in mesh.axis_names and mesh.shape[a] > 1)
  size = 1
  for a in axes:
    size *= mesh.shape[a]
  return axes if axes and batch % size == 0 else ()


def sharded_attention(impl, q, k, v, kmask, block, mesh):
  """Runs schedule `impl` on global [b, L, h, d] arrays; L divisible by seq size x block."""
  n = mesh.shape[SEQ]
  spec = P(batch_axes(mesh, q.shape[0]) or None, SEQ, None, None)
  mask_spec = P(spec[0], SEQ)
  schedule = SCHEDULES[impl]
  return jax.shard_map(lambda q, k, v, m: schedule(q, k, v, m, block, n), mesh=mesh,
                       in_specs=(spec, spec, spec, mask_spec), out_specs=spec,
                       check_vma=False)(q, k, v, kmask)


def constrain_tokens(x, impl):
  """Lays [b, L, D] activations out as P(batch_axes, 'seq', None) for sharded schedules.

  Outside attention everything (LayerNorm, MLP, residuals) then stays local to each sequence
  shard; a no-op without a mesh, for other schedules, or when L does not divide.
  """
  if impl not in SCHEDULES:
    return x
  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty or SEQ not in mesh.axis_names or x.shape[1] % mesh.shape[SEQ]:
    return x
  return jax.lax.with_sharding_constraint(x, P(batch_axes(mesh, x.shape[0]) or None, SEQ, None))
