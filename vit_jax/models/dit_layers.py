"""Building blocks of the Diffusion Transformer (DiT, Peebles & Xie 2023), in Flax Linen.

Module and parameter names are chosen so that a PyTorch DiT state-dict key maps onto a Flax
path by renaming only: `blocks.3.adaLN_modulation.1.weight` is `blocks_3/adaLN_modulation_1/
kernel` (a number joins the name before it with `_`; Linear `weight` is the transposed Dense
`kernel`; the label table's `weight` is `embedding`). Initialisers follow the original:
xavier-uniform Linears with zero bias, N(0, 0.02) timestep MLP and label table, zero adaLN
modulation and zero final projection (adaLN-Zero: every block starts as the identity).

`grads_as_dots` builds the Linears and LayerNorms from cpu_backward_layers.py: the same
parameters and forward pass, with a backward that XLA:CPU runs 2-2.5x faster (the CPU recipe
sets it; accelerators gain nothing from it).
"""

from collections.abc import Mapping
from collections.abc import Sequence
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from vit_jax import attention
from vit_jax import errors
from vit_jax.models import cpu_backward_layers
from vit_jax.models import patch_embedding

Dtype = Any
FREQUENCY_EMBEDDING_SIZE = 256
LAYER_NORM_EPSILON = 1e-6

_xavier = nn.initializers.xavier_uniform()
_zeros = nn.initializers.zeros_init()


def sincos_2d(grid_shape: Sequence[int], width: int) -> np.ndarray:
  """DiT's fixed position embedding [h*w, width], computed in float64 as the original.

  The first half of the channels encodes the column index, the second half the row index;
  each half is [sin, cos] at frequencies 10000^(-i / (width / 4)). Tokens are row-major.
  """
  if width % 4:
    raise errors.UserInputError(
        f'DiT hidden_size={width} must be divisible by 4 for the 2-D sin-cos position '
        'embedding; pick a multiple of 4 (every DiT size is a multiple of 64).'
    )
  h, w = grid_shape
  omega = 1.0 / 10000 ** (np.arange(width // 4, dtype=np.float64) / (width / 4))
  rows, cols = np.meshgrid(
      np.arange(h, dtype=np.float64), np.arange(w, dtype=np.float64), indexing='ij'
  )

  def encode(positions):
    angles = positions.reshape(-1)[:, None] * omega[None]
    return np.concatenate([np.sin(angles), np.cos(angles)], axis=1)

  return np.concatenate([encode(cols), encode(rows)], axis=1)


def timestep_frequencies(dim: int, max_period: float = 10000.0) -> np.ndarray:
  """The dim // 2 float32 frequencies exp(-log(max_period) * i / half) of the timestep code.

  Product and division in float32 as the original computes them; the exponential is taken in
  float64 and rounded once, so the constant does not depend on a float32 exp's last bit.
  """
  half = dim // 2
  exponent = (
      np.float32(-math.log(max_period)) * np.arange(half, dtype=np.float32) / np.float32(half)
  )
  return np.exp(exponent.astype(np.float64)).astype(np.float32)


def timestep_embedding(t, dim: int = FREQUENCY_EMBEDDING_SIZE, max_period: float = 10000.0):
  """Sinusoidal code [batch, dim] of (possibly fractional) timesteps t [batch]: [cos, sin]."""
  args = jnp.asarray(t).astype(jnp.float32)[:, None] * timestep_frequencies(dim, max_period)
  embedding = jnp.concatenate([jnp.cos(args), jnp.sin(args)], axis=-1)
  if dim % 2:
    embedding = jnp.concatenate([embedding, jnp.zeros_like(embedding[:, :1])], axis=-1)
  return embedding


def modulate(x, shift, scale):
  """adaLN: x * (1 + scale) + shift, per example ([batch, width] over [batch, tokens, width])."""
  return x * (1 + scale[:, None]) + shift[:, None]


def _dense(features, dtype, param_dtype, name, zero=False, init=None, grads_as_dots=False):
  cls = cpu_backward_layers.Dense if grads_as_dots else nn.Dense
  return cls(
      features,
      dtype=dtype,
      param_dtype=param_dtype,
      name=name,
      kernel_init=_zeros if zero else (init or _xavier),
      bias_init=_zeros,
  )


def _linear(module, features, name, zero=False):
  """`_dense` with the dtype, param_dtype and grads_as_dots of the calling `module`."""
  return _dense(
      features,
      module.dtype,
      module.param_dtype,
      name,
      zero=zero,
      grads_as_dots=module.grads_as_dots,
  )


def _layer_norm(dtype, grads_as_dots=False):
  """LayerNorm without scale or bias, eps 1e-6, two-pass variance (as PyTorch's)."""
  cls = cpu_backward_layers.LayerNorm if grads_as_dots else nn.LayerNorm
  return cls(
      epsilon=LAYER_NORM_EPSILON,
      use_bias=False,
      use_scale=False,
      use_fast_variance=False,
      dtype=dtype,
  )


class PatchEmbed(nn.Module):
  """timm's PatchEmbed: a patch x patch conv with stride patch (as one matmul), then tokens.

  The kernel [p, p, c, D] is xavier-uniform over its flattened [p*p*c, D] view, as DiT
  initialises the conv like a Linear.
  """

  hidden_size: int
  patch_size: int
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    p = self.patch_size
    x = patch_embedding.PatchEmbedding(
        features=self.hidden_size,
        patch_size=(p, p),
        dtype=self.dtype,
        param_dtype=self.param_dtype,
        name='proj',
        kernel_init=nn.initializers.xavier_uniform(in_axis=(0, 1, 2), out_axis=-1),
        bias_init=_zeros,
    )(x)
    n, h, w, d = x.shape
    return x.reshape(n, h * w, d)


class TimestepEmbedder(nn.Module):
  """Timestep -> 256-frequency sinusoidal code -> Linear, SiLU, Linear (`mlp_0`, `mlp_2`)."""

  hidden_size: int
  frequency_embedding_size: int = FREQUENCY_EMBEDDING_SIZE
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, t):
    init = nn.initializers.normal(stddev=0.02)
    x = timestep_embedding(t, self.frequency_embedding_size)
    x = _dense(self.hidden_size, self.dtype, self.param_dtype, 'mlp_0', init=init)(x)
    return _dense(self.hidden_size, self.dtype, self.param_dtype, 'mlp_2', init=init)(nn.silu(x))


class LabelEmbedder(nn.Module):
  """Class label -> embedding; the extra last row (when dropout_prob > 0) is the null class.

  In training each label is replaced by the null class with probability `dropout_prob`
  (classifier-free guidance), drawn from the `rng_collection` stream; `force_drop_ids` (1 =
  drop) replaces exactly those, in training or not.
  """

  num_classes: int
  hidden_size: int
  dropout_prob: float
  rng_collection: str = 'dropout'
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, labels, *, train, force_drop_ids=None):
    has_null = self.dropout_prob > 0
    if force_drop_ids is not None and not has_null:
      raise errors.UserInputError(
          'force_drop_ids needs a null class, but class_dropout_prob=0 built none; use a '
          'model with class_dropout_prob > 0 (DiT uses 0.1).'
      )
    if force_drop_ids is not None:
      labels = jnp.where(force_drop_ids == 1, self.num_classes, labels)
    elif train and has_null:
      drop = (
          jax.random.uniform(self.make_rng(self.rng_collection), labels.shape) < self.dropout_prob
      )
      labels = jnp.where(drop, self.num_classes, labels)
    table = nn.Embed(
        self.num_classes + int(has_null),
        self.hidden_size,
        dtype=self.dtype,
        param_dtype=self.param_dtype,
        name='embedding_table',
        embedding_init=nn.initializers.normal(stddev=0.02),
    )
    return table(labels)


class Attention(nn.Module):
  """timm's Attention: fused `qkv` Linear, attention via vit_jax.attention, `proj` Linear."""

  num_heads: int
  attention: Mapping[str, Any] | None = None
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  grads_as_dots: bool = False

  @nn.compact
  def __call__(self, x):
    b, n, d = x.shape
    qkv = _linear(self, 3 * d, 'qkv')(x)
    # [b, n, 3, heads, head_dim]: the order of timm's reshape of its [3 * D] output.
    qkv = qkv.reshape(b, n, 3, self.num_heads, d // self.num_heads)
    out = attention.dot_product_attention(
        qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2], **dict(self.attention or {})
    )
    return _linear(self, d, 'proj')(out.reshape(b, n, d))


class Mlp(nn.Module):
  """timm's Mlp: `fc1`, tanh-approximate GELU, `fc2` (no dropout)."""

  hidden_features: int
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  grads_as_dots: bool = False

  @nn.compact
  def __call__(self, x):
    y = nn.gelu(_linear(self, self.hidden_features, 'fc1')(x), approximate=True)
    return _linear(self, x.shape[-1], 'fc2')(y)


class DiTBlock(nn.Module):
  """adaLN-Zero block: the conditioning c gives shift, scale and gate of attention and MLP."""

  num_heads: int
  mlp_ratio: float = 4.0
  attention: Mapping[str, Any] | None = None
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  grads_as_dots: bool = False

  @nn.compact
  def __call__(self, x, c):
    impl = (self.attention or {}).get('impl', 'auto')
    x = attention.constrain_tokens(x, impl)
    d = x.shape[-1]
    kwargs = dict(dtype=self.dtype, param_dtype=self.param_dtype, grads_as_dots=self.grads_as_dots)
    modulation = _linear(self, 6 * d, 'adaLN_modulation_1', zero=True)(nn.silu(c))
    shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = jnp.split(
        modulation, 6, axis=-1
    )
    norm = lambda: _layer_norm(self.dtype, self.grads_as_dots)
    y = modulate(norm()(x), shift_msa, scale_msa)
    y = Attention(self.num_heads, self.attention, name='attn', **kwargs)(y)
    x = x + gate_msa[:, None] * y
    y = modulate(norm()(x), shift_mlp, scale_mlp)
    y = Mlp(int(d * self.mlp_ratio), name='mlp', **kwargs)(y)
    return attention.constrain_tokens(x + gate_mlp[:, None] * y, impl)


class FinalLayer(nn.Module):
  """adaLN (shift, scale) over a plain LayerNorm, then `linear` to patch*patch*out_channels."""

  patch_size: int
  out_channels: int
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  grads_as_dots: bool = False

  @nn.compact
  def __call__(self, x, c):
    d = x.shape[-1]
    modulation = _linear(self, 2 * d, 'adaLN_modulation_1', zero=True)(nn.silu(c))
    shift, scale = jnp.split(modulation, 2, axis=-1)
    x = modulate(_layer_norm(self.dtype, self.grads_as_dots)(x), shift, scale)
    features = self.patch_size * self.patch_size * self.out_channels
    return _linear(self, features, 'linear', zero=True)(x)
