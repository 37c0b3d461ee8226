"""Attention schedules behind one entry point, `dot_product_attention`.

impl: 'dense' (reference), 'blockwise' (memory linear in length), the fused kernels 'pallas'
(flash attention on TPU) and 'cudnn' (flash attention on NVIDIA GPUs), the sequence-sharded
'ring', 'allgather', 'ulysses' (run under a mesh with a 'seq' axis, set with jax.set_mesh),
and 'auto' (the default: picked per platform and length, see select.py). kernel: what the
sharded schedules run per device, 'xla' (blockwise), 'pallas' or 'auto' (pallas on TPU).
All take Flax's [batch, length, heads, head_dim] layout and return it. Lengths that do not
divide into blocks (or devices x blocks) are padded with masked keys; padded queries are
dropped.
"""

import jax
import jax.numpy as jnp

from vit_jax.attention import pallas_tpu
from vit_jax.attention import select
from vit_jax.attention.blockwise import blockwise_attention
from vit_jax.attention.core import attention_weights
from vit_jax.attention.core import dense_attention
from vit_jax.attention.cudnn import cudnn_attention
from vit_jax.attention.sharded import batch_sharded_kernel
from vit_jax.attention.sharded import constrain_tokens
from vit_jax.attention.sharded import SCHEDULES
from vit_jax.attention.sharded import sharded_attention

IMPLS = ('auto', 'dense', 'blockwise', 'pallas', 'cudnn') + tuple(SCHEDULES)
KERNELS = ('auto', 'xla', 'pallas')
SHARDED = tuple(SCHEDULES)


def validate_options(impl='auto', block_size=512, kernel='auto'):
  """Raises a clear ValueError for a bad schedule or block size, before anything compiles."""
  if impl not in IMPLS:
    raise ValueError(f'transformer.attention.impl={impl!r} is not one of {IMPLS}')
  if not isinstance(block_size, int) or block_size < 1:
    raise ValueError(
        f'transformer.attention.block_size={block_size!r} must be a positive '
        'integer (keys per block, e.g. 512)'
    )
  if kernel not in KERNELS:
    raise ValueError(
        f'transformer.attention.kernel={kernel!r} is not one of {KERNELS} (the '
        "per-device work of ring/allgather/ulysses; 'auto': pallas on TPU)"
    )


def _current_mesh(impl):
  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty or 'seq' not in mesh.axis_names:
    raise ValueError(
        f"transformer.attention.impl={impl!r} shards the sequence over a mesh axis 'seq', but "
        f'the current mesh is {mesh}; run under `with jax.set_mesh(mesh):` with a mesh that has '
        "a 'seq' axis (config.mesh.seq, size 1 is fine) or use impl='blockwise'."
    )
  return mesh


def _key_mask(mask, batch, length):
  """A [batch, length] key mask from Flax's mask broadcastable to [b, h, q, k]."""
  if mask is None:
    return jnp.ones((batch, length), bool)
  mask = jnp.asarray(mask)
  if mask.ndim != 4 or mask.shape[1] != 1 or mask.shape[2] != 1:
    raise ValueError(
        f'non-dense attention supports key masks of shape [batch, 1, 1, keys]; '
        f'got {mask.shape}. Use impl=dense for general masks.'
    )
  return jnp.broadcast_to(mask[:, 0, 0, :], (batch, length)).astype(bool)


def _pad(x, length, axis=1):
  pad = [(0, 0)] * x.ndim
  pad[axis] = (0, length - x.shape[axis])
  return jnp.pad(x, pad)


def resolved_impl(impl, length, dtype, dropout_active=False):
  """The schedule that runs: `impl`, or for 'auto' the one select.py picks here."""
  return select.choose_impl(length, dtype, dropout_active) if impl == 'auto' else impl


def dot_product_attention(
    q,
    k,
    v,
    *,
    impl='auto',
    block_size=512,
    kernel='auto',
    mask=None,
    dropout_rng=None,
    dropout_rate=0.0,
    deterministic=True,
    precision=None,
):
  """Attention on [batch, length, heads, head_dim]; returns the same layout and dtype as q."""
  validate_options(impl, block_size, kernel)
  impl = resolved_impl(impl, q.shape[1], q.dtype, dropout_rate > 0.0 and not deterministic)
  if impl == 'dense':
    return dense_attention(
        q,
        k,
        v,
        mask=mask,
        dropout_rng=dropout_rng,
        dropout_rate=dropout_rate,
        deterministic=deterministic,
        precision=precision,
    )
  if dropout_rate > 0.0 and not deterministic:
    raise ValueError(
        f'transformer.attention_dropout_rate={dropout_rate} is only supported '
        f"with impl='dense' (got impl={impl!r}); set it to 0."
    )
  if q.shape[1] != k.shape[1]:
    raise ValueError(
        f'{impl} attention is self-attention: query length {q.shape[1]} != key '
        f'length {k.shape[1]}'
    )
  if impl == 'cudnn':
    return cudnn_attention(q, k, v, mask)
  batch, length, heads, _ = q.shape
  kmask = _key_mask(mask, batch, length)
  devices = 1
  if impl in SHARDED:
    mesh = _current_mesh(impl)
    devices = mesh.shape['seq']
    if impl == 'ulysses' and heads % devices:
      raise ValueError(
          f"impl='ulysses' needs num_heads ({heads}) divisible by the 'seq' mesh "
          f"axis size ({devices}); use impl='ring' or another mesh."
      )
  pallas = impl == 'pallas' or (impl in SHARDED and select.use_pallas_kernel(kernel))
  local = -(-length // devices)
  if pallas:  # blocks of whole 128-lane tiles
    block, local = pallas_tpu.kernel_block(local, block_size)
  else:  # as few blocks of at most block_size as possible, wasting little padding
    num_blocks = -(-local // block_size)
    block = -(-local // num_blocks)
    local = num_blocks * block
  q, k, v, kmask = (_pad(x, devices * local) for x in (q, k, v, kmask))
  if impl == 'blockwise':
    out = blockwise_attention(q, k, v, kmask, block)
  elif impl == 'pallas':
    mesh = jax.sharding.get_abstract_mesh()
    out = (
        pallas_tpu.flash_attention(q, k, v, kmask, block)
        if mesh.empty
        else batch_sharded_kernel(q, k, v, kmask, block, mesh)
    )
  else:
    out = sharded_attention(impl, q, k, v, kmask, block, mesh, pallas)
  return out[:, :length]
