"""`impl='cudnn'`: cuDNN flash attention on NVIDIA GPUs through jax.nn.dot_product_attention.

jax.nn.dot_product_attention takes our [batch, length, heads, head_dim] layout as is and a
boolean mask broadcastable to [batch, heads, q_len, k_len]; its cuDNN implementation needs a
GPU, bfloat16 or float16 inputs and head_dim <= 128 (checked here, before compiling, with the
fix in the message). Its XLA implementation is the same call on any platform: the tests run
this wiring through it against our dense reference.
"""

import jax
import jax.numpy as jnp

from vit_jax.attention import select

MAX_HEAD_DIM = 128


def check_supported(q):
  where = select.platform()
  if where != "gpu":
    raise ValueError(
        f"transformer.attention.impl='cudnn' needs an NVIDIA GPU; this program "
        f"is compiled for {where}. Use impl='auto' (picks the kernel per "
        "platform), 'pallas' on TPU, or 'dense' / 'blockwise'."
    )
  if jnp.dtype(q.dtype) not in select.HALF:
    raise ValueError(
        f"transformer.attention.impl='cudnn' needs bfloat16 or float16 "
        f"activations, got {q.dtype}; set config.dtype='bfloat16' or use "
        "impl='auto'."
    )
  if q.shape[-1] > MAX_HEAD_DIM:
    raise ValueError(
        f"transformer.attention.impl='cudnn' supports head_dim <= {MAX_HEAD_DIM} "
        f"(hidden_size / num_heads), got {q.shape[-1]}; use more heads or "
        "impl='blockwise'."
    )


def cudnn_attention(q, k, v, mask=None, implementation="cudnn"):
  """softmax(q k^T / sqrt(d)) v on [b, L, h, d]; `mask` broadcastable to [b, h, q, k]."""
  if implementation == "cudnn":
    check_supported(q)
  if mask is not None:
    mask = jnp.asarray(mask, bool)
  return jax.nn.dot_product_attention(q, k, v, mask=mask, implementation=implementation)
