"""Dense, LayerNorm and self-attention with Flax's parameters and a backward pass for XLA:CPU.

Autodiff turns the gradient of a bias or LayerNorm parameter into a column sum over every
token of the batch ([batch * tokens, features] -> [features]). XLA:CPU rewrites such sums
into reduce-windows of 32 rows (for accuracy) and runs those element by element: in the
ViT/4 Fashion-MNIST train step they took about 15 % of the time.
Written as `ones @ g`, the same sums run as vectorised matrix-vector products, 2-3x faster.
The kernel gradient x^T g is computed after transposing the narrower of x and g on its own:
left to itself XLA:CPU transposed the MLP's wide gradient with its producer fused in.

The forward passes are those of `flax.linen.Dense`, `LayerNorm` (scale folded into the
reciprocal standard deviation) and `MultiHeadDotProductAttention`; the modules
declare the same parameters under the same names with the same initial values, so
checkpoints and parameter trees do not change. Only the rounding of the gradients does (a dot
sums in another order than a reduce). `transformer.grads_as_dots` selects them in ViT
(vit.py), `grads_as_dots` in DiT (dit_layers.py), where they make the train step 2-2.5x faster.
"""

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

Dtype = Any


def _column_sum(g):
  """Sum of g over all axes but the last, as a matrix-vector product."""
  rows = g.reshape(-1, g.shape[-1])
  return jnp.dot(
      jnp.ones((rows.shape[0],), rows.dtype),
      rows,
      precision=jax.lax.Precision.HIGHEST,
      preferred_element_type=jnp.float32,
  )


def _row_mean(x):
  """Mean of x over its last axis (kept), as a matrix-vector product."""
  ones = jnp.full((x.shape[-1],), 1.0 / x.shape[-1], x.dtype)
  return jnp.dot(x, ones, precision=jax.lax.Precision.HIGHEST)[..., None]


@jax.custom_vjp
def dense(x, kernel, bias):
  """x @ kernel + bias over the last axis of x."""
  return jnp.dot(x, kernel) + bias


def _dense_fwd(x, kernel, bias):
  return dense(x, kernel, bias), (x, kernel)


def _transposed(a):
  """a [n, k] as a stored [k, n] array: a plain copy, nothing fused into it (XLA:CPU runs
  elementwise producers fused into a transpose far slower than the two apart)."""
  barrier = jax.lax.optimization_barrier
  return barrier(barrier(a).T)


def _dense_bwd(residuals, g):
  x, kernel = residuals
  x_rows, g_rows = x.reshape(-1, x.shape[-1]), g.reshape(-1, g.shape[-1])
  # The kernel's gradient x^T g as a plain row-major product, transposing the narrower of x
  # and g; left to itself XLA:CPU transposes g with its producer fused in.
  if x_rows.shape[1] <= g_rows.shape[1]:
    d_kernel = jnp.dot(_transposed(x_rows), g_rows)
  else:
    d_kernel = jnp.dot(_transposed(g_rows), x_rows).T
  return jnp.dot(g, kernel.T), d_kernel, _column_sum(g).astype(g.dtype)


dense.defvjp(_dense_fwd, _dense_bwd)


def _normalize(x, scale, bias, epsilon, fast_variance):
  mean = jnp.mean(x, -1, keepdims=True)
  if fast_variance:  # E[x^2] - E[x]^2, flax's default
    var = jnp.maximum(0.0, jnp.mean(jnp.square(x), -1, keepdims=True) - jnp.square(mean))
  else:  # E[(x - E[x])^2], as PyTorch (DiT) computes it
    var = jnp.mean(jnp.square(x - mean), -1, keepdims=True)
  inv = jax.lax.rsqrt(var + epsilon)
  return (x - mean) * (inv * scale) + bias, (x - mean) * inv, inv


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def layer_norm(x, scale, bias, epsilon, fast_variance=True):
  """LayerNorm over the last axis of float32 x, as flax.linen.LayerNorm computes it."""
  return _normalize(x, scale, bias, epsilon, fast_variance)[0]


def _layer_norm_fwd(x, scale, bias, epsilon, fast_variance):
  y, normalized, inv = _normalize(x, scale, bias, epsilon, fast_variance)
  return y, (normalized, inv, scale)


def _layer_norm_bwd(epsilon, fast_variance, residuals, g):
  del epsilon, fast_variance
  normalized, inv, scale = residuals
  g_scaled = g * scale
  dx = inv * (g_scaled - _row_mean(g_scaled) - normalized * _row_mean(g_scaled * normalized))
  return dx, _column_sum(g * normalized), _column_sum(g)


layer_norm.defvjp(_layer_norm_fwd, _layer_norm_bwd)


class LayerNorm(nn.Module):
  """flax.linen.LayerNorm over the last axis (same `scale` / `bias` parameters, the same
  `use_scale`, `use_bias` and `use_fast_variance` options)."""

  epsilon: float = 1e-6
  dtype: Dtype = None
  param_dtype: Dtype = jnp.float32
  use_bias: bool = True
  use_scale: bool = True
  use_fast_variance: bool = True

  @nn.compact
  def __call__(self, x):
    features = x.shape[-1]
    compute = jnp.promote_types(x.dtype, jnp.float32)
    # Without a parameter the constant stands in; its unused gradient is dead code to XLA.
    scale = jnp.ones((features,), compute)
    bias = jnp.zeros((features,), compute)
    params = []
    if self.use_scale:
      scale = self.param('scale', nn.initializers.ones, (features,), self.param_dtype)
      params.append(scale)
    if self.use_bias:
      bias = self.param('bias', nn.initializers.zeros, (features,), self.param_dtype)
      params.append(bias)
    dtype = self.dtype or jnp.result_type(x, *params)
    y = layer_norm(
        x.astype(compute),
        scale.astype(compute),
        bias.astype(compute),
        self.epsilon,
        self.use_fast_variance,
    )
    return y.astype(dtype)


class Dense(nn.Module):
  """flax.linen.Dense (same `kernel` / `bias` parameters) through `dense` and its backward."""

  features: int
  dtype: Dtype = None
  param_dtype: Dtype = jnp.float32
  kernel_init: Any = nn.initializers.lecun_normal()
  bias_init: Any = nn.initializers.zeros

  @nn.compact
  def __call__(self, x):
    kernel = self.param('kernel', self.kernel_init, (x.shape[-1], self.features), self.param_dtype)
    bias = self.param('bias', self.bias_init, (self.features,), self.param_dtype)
    x, kernel, bias = nn.dtypes.promote_dtype(x, kernel, bias, dtype=self.dtype)
    return dense(x, kernel, bias)


def _flat_init(init, flat_shape):
  """`init` on the 2-D [fan_in, fan_out] shape, reshaped: flax.linen.DenseGeneral's rule, so
  the same rng gives the same kernel."""

  def wrapped(rng, shape, dtype=jnp.float32):
    return jnp.reshape(init(rng, flat_shape, dtype), shape)

  return wrapped


class _Projection(nn.Module):
  """flax.linen.DenseGeneral's `kernel` [*in_shape, *out_shape] / `bias` [*out_shape] over the
  trailing `len(in_shape)` axes, applied through `dense`."""

  in_shape: tuple
  out_shape: tuple
  kernel_init: Any
  dtype: Dtype = None
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    fan_in, fan_out = int(np.prod(self.in_shape)), int(np.prod(self.out_shape))
    kernel = self.param(
        'kernel',
        _flat_init(self.kernel_init, (fan_in, fan_out)),
        self.in_shape + self.out_shape,
        self.param_dtype,
    )
    bias = self.param(
        'bias', _flat_init(nn.initializers.zeros, (fan_out,)), self.out_shape, self.param_dtype
    )
    x, kernel, bias = nn.dtypes.promote_dtype(x, kernel, bias, dtype=self.dtype)
    lead = x.shape[: x.ndim - len(self.in_shape)]
    y = dense(x.reshape(lead + (fan_in,)), kernel.reshape(fan_in, fan_out), bias.reshape(fan_out))
    return y.reshape(lead + self.out_shape)


class MultiHeadDotProductAttention(nn.Module):
  """Self-attention with flax.linen.MultiHeadDotProductAttention's parameters (`query`, `key`,
  `value` kernels [width, heads, head_dim], `out` [heads, head_dim, width]) and its call:
  `attention_fn(query, key, value, mask=..., dropout_rng=..., ..., module=)`, whose
  `module` receives sown attention weights when `sow_weights`."""

  num_heads: int
  attention_fn: Any
  dtype: Dtype = None
  param_dtype: Dtype = jnp.float32
  kernel_init: Any = nn.initializers.xavier_uniform()
  dropout_rate: float = 0.0
  deterministic: bool = True

  @nn.compact
  def __call__(self, x, mask=None, sow_weights=False):
    width = x.shape[-1]
    if width % self.num_heads:
      raise ValueError(f'width {width} is not divisible by num_heads={self.num_heads}')
    heads = (self.num_heads, width // self.num_heads)
    project = lambda name, in_shape, out_shape: _Projection(
        in_shape, out_shape, self.kernel_init, self.dtype, self.param_dtype, name=name
    )
    query, key, value = (project(name, (width,), heads)(x) for name in ('query', 'key', 'value'))
    dropout_rng = None
    if self.dropout_rate > 0.0 and not self.deterministic:
      dropout_rng = self.make_rng('dropout')
    y = self.attention_fn(
        query,
        key,
        value,
        mask=mask,
        dropout_rng=dropout_rng,
        dropout_rate=self.dropout_rate,
        deterministic=self.deterministic,
        module=self if sow_weights else None,
    )
    return project('out', heads, (width,))(y)
