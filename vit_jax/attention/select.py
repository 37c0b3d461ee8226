"""`impl='auto'` and `kernel='auto'`: the implementation chosen per platform and length.

- Short sequences (< 512 tokens, e.g. ViT-B/16's 197) run `dense` everywhere: its [L, L]
  logits are small and XLA fuses it well.
- Longer ones run the fused kernel of the platform: Pallas flash attention on TPU, cuDNN flash
  attention on GPU (bfloat16 / float16 only; float32 falls back to the CPU rule), and on CPU
  `dense` up to 1024 tokens, `blockwise` beyond (memory linear in length).
- Attention dropout in training is only implemented densely, so it forces `dense`; a mesh
  with a 'seq' axis larger than 1 means the tokens are sharded: `ring`.
The platform is that of the mesh being traced for (so an ahead-of-time compile for a TPU
topology on a CPU machine picks the TPU path), else JAX's default backend.
"""

import jax
import jax.numpy as jnp

SHORT = 512
CPU_DENSE_MAX = 1024
HALF = (jnp.bfloat16, jnp.float16)


def platform():
  """'cpu', 'gpu' or 'tpu': of the current (abstract) mesh's devices, else the default."""
  mesh = jax.sharding.get_abstract_mesh()
  device = None if mesh.empty else mesh.abstract_device
  return device.platform if device is not None else jax.default_backend()


def seq_devices():
  mesh = jax.sharding.get_abstract_mesh()
  return 1 if mesh.empty or 'seq' not in mesh.axis_names else mesh.shape['seq']


def choose_impl(length, dtype, dropout_active):
  """The schedule `impl='auto'` runs for `length` tokens of `dtype` here."""
  if dropout_active:
    return 'dense'
  if seq_devices() > 1:
    return 'ring'
  where = platform()
  if where == 'tpu':
    return 'dense' if length < SHORT else 'pallas'
  if where == 'gpu' and jnp.dtype(dtype) in HALF:
    return 'dense' if length < SHORT else 'cudnn'
  return 'dense' if length <= CPU_DENSE_MAX else 'blockwise'


def use_pallas_kernel(kernel):
  """Whether a sharded schedule runs its per-block work on the Pallas kernel."""
  return kernel == 'pallas' or (kernel == 'auto' and platform() == 'tpu')
