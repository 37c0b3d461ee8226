"""Patch embedding: non-overlapping patches -> tokens, as reshape + matmul.

The original's `embedding` is nn.Conv(kernel_size=strides=patch, padding='VALID'). With
stride equal to kernel size that is one matmul per patch, and written as one it compiles far
faster on TPU: the gradient of the 16x16 stride-16 conv alone, ViT-B/16 shapes compiled for a
v5e 2x2, took 57 s here, the same map as reshape + matmul 10 s (bench/tpu_compile_time.py).
Parameters, their shapes (kernel [ph, pw, channels, D], bias [D]) and their initialisers
(lecun-normal, zeros) are nn.Conv's, so checkpoints load unchanged and one seed gives the same
parameters either way.
"""

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

Dtype = Any


class PatchEmbedding(nn.Module):
  """[n, H, W, c] -> [n, H/ph, W/pw, features]: each ph x pw patch through one Dense."""

  features: int
  patch_size: Sequence[int]
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  kernel_init: Any = nn.initializers.lecun_normal()  # nn.Conv's defaults
  bias_init: Any = nn.initializers.zeros_init()

  @nn.compact
  def __call__(self, x):
    n, h, w, c = x.shape
    ph, pw = self.patch_size
    if h % ph or w % pw:
      raise ValueError(f'PatchEmbedding: input {h}x{w} does not divide into {ph}x{pw} patches')
    # Created in nn.Conv's order (kernel, then bias): the same seed gives the same values.
    kernel = self.param('kernel', self.kernel_init, (ph, pw, c, self.features), self.param_dtype)
    bias = self.param('bias', self.bias_init, (self.features,), self.param_dtype)
    x, kernel, bias = nn.dtypes.promote_dtype(x, kernel, bias, dtype=self.dtype)
    patches = x.reshape(n, h // ph, ph, w // pw, pw, c)
    return jnp.einsum('nypxqc,pqcd->nyxd', patches, kernel) + bias
