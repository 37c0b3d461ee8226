"""ResNet stem of the hybrid (R+ViT) models: BiT-style bottlenecks with StdConv and GroupNorm.

Parameter names follow the original code (`conv_root`, `gn_root`, `block{i}/unit{j}/...`), so
hybrid checkpoints load by renaming keys only.
"""

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

Dtype = Any


def weight_standardize(w, axis, eps):
  """Standardises `w` over `axis`: (w - mean) / (population std + eps)."""
  w = w - jnp.mean(w, axis=axis)
  return w / (jnp.std(w, axis=axis) + eps)


class StdConv(nn.Conv):
  """Convolution whose kernel is standardised per output channel on every use."""

  def param(self, name, *args, **kwargs):
    param = super().param(name, *args, **kwargs)
    if name == 'kernel':
      param = weight_standardize(param, axis=[0, 1, 2], eps=1e-5)
    return param


class ResidualUnit(nn.Module):
  """Bottleneck unit: 1x1 -> 3x3 (strided) -> 1x1, with a projection when shapes change."""

  features: int
  strides: Sequence[int] = (1, 1)
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    conv = lambda features, kernel, strides, name: StdConv(
        features=features,
        kernel_size=kernel,
        strides=strides,
        use_bias=False,
        dtype=self.dtype,
        param_dtype=self.param_dtype,
        name=name,
    )
    norm = lambda name, **kw: nn.GroupNorm(
        dtype=self.dtype, param_dtype=self.param_dtype, name=name, **kw
    )

    residual = x
    if x.shape[-1] != self.features * 4 or tuple(self.strides) != (1, 1):
      residual = conv(self.features * 4, (1, 1), self.strides, 'conv_proj')(residual)
      residual = norm('gn_proj')(residual)

    y = nn.relu(norm('gn1')(conv(self.features, (1, 1), (1, 1), 'conv1')(x)))
    y = nn.relu(norm('gn2')(conv(self.features, (3, 3), self.strides, 'conv2')(y)))
    y = conv(self.features * 4, (1, 1), (1, 1), 'conv3')(y)
    # Zero-initialised last scale: every unit starts as the identity on its residual.
    y = norm('gn3', scale_init=nn.initializers.zeros)(y)
    return nn.relu(residual + y)


class ResNetStage(nn.Module):
  """`block_size` residual units; only the first one strides."""

  block_size: int
  nout: int
  first_stride: Sequence[int]
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    unit = lambda strides, name: ResidualUnit(
        self.nout, strides=strides, dtype=self.dtype, param_dtype=self.param_dtype, name=name
    )
    x = unit(self.first_stride, 'unit1')(x)
    for i in range(1, self.block_size):
      x = unit((1, 1), f'unit{i + 1}')(x)
    return x


def stem_downsampling(resnet_config):
  """How much the hybrid stem shrinks the image: 4 for the root, x2 per stage after the first.

  1 when there is no stem (`resnet_config` is None).
  """
  if resnet_config is None:
    return 1
  return 4 * 2 ** max(len(tuple(resnet_config['num_layers'])) - 1, 0)


def apply_resnet_stem(x, num_layers, width_factor, dtype, param_dtype=jnp.float32):
  """Runs the hybrid stem inside the caller's compact scope (original parameter paths)."""
  width = int(64 * width_factor)
  x = StdConv(
      features=width,
      kernel_size=(7, 7),
      strides=(2, 2),
      use_bias=False,
      dtype=dtype,
      param_dtype=param_dtype,
      name='conv_root',
  )(x)
  x = nn.GroupNorm(dtype=dtype, param_dtype=param_dtype, name='gn_root')(x)
  x = nn.relu(x)
  x = nn.max_pool(x, window_shape=(3, 3), strides=(2, 2), padding='SAME')
  for i, block_size in enumerate(num_layers or ()):
    x = ResNetStage(
        block_size=block_size,
        nout=width * 2**i,
        first_stride=(1, 1) if i == 0 else (2, 2),
        dtype=dtype,
        param_dtype=param_dtype,
        name=f'block{i + 1}',
    )(x)
  return x
