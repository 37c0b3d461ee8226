"""Stable Diffusion's VAE (diffusers' `AutoencoderKL`, the autoencoder DiT trains in), in Linen.

The architecture follows a diffusers `config.json` (block_out_channels, layers_per_block,
norm_num_groups, latent_channels, in/out_channels, act_fn, quant_conv, post_quant_conv,
mid-block attention), and the parameter tree follows diffusers' state-dict names: a number
joins the name before it with `_` (`encoder.down_blocks.0.resnets.0.conv1.weight` is
`encoder/down_blocks_0/resnets_0/conv1/kernel`), so loading a released VAE
(vit_jax/checkpoints/vae_format.py) renames and transposes only.

Layout is NHWC. `encode` maps images in [-1, 1] to the posterior's (mean, logvar);
`decode` maps unscaled latents to images in about [-1, 1]. Diffusion models see latents
multiplied by `scaling_factor` (0.18215 for Stable Diffusion's VAE, the value DiT uses):
`encode_to_latents` and `decode_latents` (vit_jax/models/vae_batches.py) apply it.
"""

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from vit_jax import attention
from vit_jax.models import vae_batches

encode_to_latents = vae_batches.encode_to_latents
decode_latents = vae_batches.decode_latents

# DiT's (and Stable Diffusion's) latent scale: latents * 0.18215 have about unit variance.
SD_SCALE_FACTOR = 0.18215
GROUP_NORM_EPSILON = 1e-6  # diffusers builds every group norm of the VAE with eps=1e-6
LOGVAR_RANGE = (-30.0, 20.0)  # diffusers clamps the posterior's log-variance to this
DOWN_BLOCK = 'DownEncoderBlock2D'
UP_BLOCK = 'UpDecoderBlock2D'
ACTIVATIONS = {'silu': nn.silu, 'swish': nn.silu}
# The VAE of Stable Diffusion 1.x, sd-vae-ft-ema and sd-vae-ft-mse (DiT's autoencoder).
SD_VAE = dict(block_out_channels=(128, 256, 512, 512), layers_per_block=2, norm_num_groups=32)

Dtype = Any


def _norm(groups, name):
  # Two-pass variance: E[x^2] - E[x]^2 loses digits on activations with a large mean.
  return nn.GroupNorm(
      num_groups=groups, epsilon=GROUP_NORM_EPSILON, use_fast_variance=False, name=name
  )


def _conv(features, dtype, name=None, kernel=3, stride=1, padding=1):
  return nn.Conv(
      features,
      (kernel, kernel),
      strides=(stride, stride),
      padding=((padding, padding), (padding, padding)),
      dtype=dtype,
      name=name,
  )


class ResnetBlock(nn.Module):
  """norm, act, 3x3 conv, twice, plus the input (through a 1x1 conv when widths differ)."""

  features: int
  groups: int
  act_fn: str = 'silu'
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    act = ACTIVATIONS[self.act_fn]
    h = _conv(self.features, self.dtype, 'conv1')(act(_norm(self.groups, 'norm1')(x)))
    h = _conv(self.features, self.dtype, 'conv2')(act(_norm(self.groups, 'norm2')(h)))
    if x.shape[-1] != self.features:
      x = _conv(self.features, self.dtype, 'conv_shortcut', kernel=1, padding=0)(x)
    return x + h


class MidAttention(nn.Module):
  """Single-head self-attention over the pixels, after a group norm, with a residual."""

  groups: int
  impl: str = 'dense'
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    b, h, w, c = x.shape
    tokens = _norm(self.groups, 'group_norm')(x).reshape(b, h * w, 1, c)
    q, k, v = (nn.Dense(c, dtype=self.dtype, name=n)(tokens) for n in ('to_q', 'to_k', 'to_v'))
    out = attention.dot_product_attention(q, k, v, impl=self.impl)
    out = nn.Dense(c, dtype=self.dtype, name='to_out_0')(out.reshape(b, h * w, c))
    return x + out.reshape(b, h, w, c)


class MidBlock(nn.Module):
  """resnet, attention (unless turned off), resnet, at the lowest resolution."""

  groups: int
  act_fn: str = 'silu'
  add_attention: bool = True
  attention_impl: str = 'dense'
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    c = x.shape[-1]
    x = ResnetBlock(c, self.groups, self.act_fn, self.dtype, name='resnets_0')(x)
    if self.add_attention:
      x = MidAttention(self.groups, self.attention_impl, self.dtype, name='attentions_0')(x)
    return ResnetBlock(c, self.groups, self.act_fn, self.dtype, name='resnets_1')(x)


class DownBlock(nn.Module):
  """`layers` resnets, then (except at the last level) a stride-2 conv."""

  features: int
  layers: int
  groups: int
  downsample: bool
  act_fn: str = 'silu'
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    for i in range(self.layers):
      x = ResnetBlock(self.features, self.groups, self.act_fn, self.dtype, name=f'resnets_{i}')(x)
    if self.downsample:
      x = DownsampleConv(self.features, self.dtype, name='downsamplers_0')(x)
    return x


class DownsampleConv(nn.Module):
  """A 3x3 conv of stride 2 after padding only the bottom and right by one pixel, as
  diffusers' VAE does."""

  features: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    x = jnp.pad(x, ((0, 0), (0, 1), (0, 1), (0, 0)))
    return _conv(self.features, self.dtype, 'conv', stride=2, padding=0)(x)


class UpsampleConv(nn.Module):
  """Nearest-neighbour 2x upsampling, then a 3x3 conv."""

  features: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    x = jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)
    return _conv(self.features, self.dtype, 'conv')(x)


class UpBlock(nn.Module):
  """`layers` resnets, then (except at the last level) 2x upsampling."""

  features: int
  layers: int
  groups: int
  upsample: bool
  act_fn: str = 'silu'
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    for i in range(self.layers):
      x = ResnetBlock(self.features, self.groups, self.act_fn, self.dtype, name=f'resnets_{i}')(x)
    if self.upsample:
      x = UpsampleConv(self.features, self.dtype, name='upsamplers_0')(x)
    return x


def _mid_block(coder):
  """The mid block of an Encoder or Decoder (called inside its compact method)."""
  return MidBlock(
      coder.groups,
      coder.act_fn,
      coder.add_attention,
      coder.attention_impl,
      coder.dtype,
      name='mid_block',
  )


class Encoder(nn.Module):
  """Images to 2 * latent_channels moments, downsampled 2x per level but the last."""

  block_out_channels: Sequence[int]
  layers_per_block: int
  groups: int
  out_channels: int
  act_fn: str = 'silu'
  add_attention: bool = True
  attention_impl: str = 'dense'
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    widths, levels = self.block_out_channels, len(self.block_out_channels)
    x = _conv(widths[0], self.dtype, 'conv_in')(x)
    for i, width in enumerate(widths):
      down = i < levels - 1
      x = DownBlock(
          width,
          self.layers_per_block,
          self.groups,
          down,
          self.act_fn,
          self.dtype,
          name=f'down_blocks_{i}',
      )(x)
    x = _mid_block(self)(x)
    x = ACTIVATIONS[self.act_fn](_norm(self.groups, 'conv_norm_out')(x))
    return _conv(2 * self.out_channels, self.dtype, 'conv_out')(x)


class Decoder(nn.Module):
  """Latents to images, upsampled 2x per level but the last, one resnet more per level."""

  block_out_channels: Sequence[int]
  layers_per_block: int
  groups: int
  out_channels: int
  act_fn: str = 'silu'
  add_attention: bool = True
  attention_impl: str = 'dense'
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, z):
    widths = tuple(reversed(self.block_out_channels))
    x = _conv(widths[0], self.dtype, 'conv_in')(z)
    x = _mid_block(self)(x)
    for i, width in enumerate(widths):
      up = i < len(widths) - 1
      x = UpBlock(
          width,
          self.layers_per_block + 1,
          self.groups,
          up,
          self.act_fn,
          self.dtype,
          name=f'up_blocks_{i}',
      )(x)
    x = ACTIVATIONS[self.act_fn](_norm(self.groups, 'conv_norm_out')(x))
    return _conv(self.out_channels, self.dtype, 'conv_out')(x)


class AutoencoderKL(nn.Module):
  """diffusers' AutoencoderKL: `encode` (images -> mean, logvar), `decode` (latents -> images).

  Fields carry the config.json names. `scaling_factor` and `shift_factor` are not used by
  `encode`/`decode` (which see unscaled latents) but by `encode_to_latents` and
  `decode_latents`, which hand diffusion models `(z - shift_factor) * scaling_factor`.
  `attention_impl` picks the mid-block attention's schedule (vit_jax.attention): 'dense' is
  exact; 'blockwise' keeps memory linear in the pixels for large images.
  """

  in_channels: int = 3
  out_channels: int = 3
  block_out_channels: Sequence[int] = (64,)
  layers_per_block: int = 1
  latent_channels: int = 4
  norm_num_groups: int = 32
  act_fn: str = 'silu'
  use_quant_conv: bool = True
  use_post_quant_conv: bool = True
  mid_block_add_attention: bool = True
  scaling_factor: float = SD_SCALE_FACTOR
  shift_factor: float = 0.0
  attention_impl: str = 'dense'
  dtype: Dtype = jnp.float32

  @property
  def downsample_factor(self):
    """Image pixels per latent pixel along each side (8 for Stable Diffusion's VAE)."""
    return 2 ** (len(self.block_out_channels) - 1)

  def setup(self):
    common = dict(
        block_out_channels=tuple(self.block_out_channels),
        layers_per_block=self.layers_per_block,
        groups=self.norm_num_groups,
        act_fn=self.act_fn,
        add_attention=self.mid_block_add_attention,
        attention_impl=self.attention_impl,
        dtype=self.dtype,
    )
    self.encoder = Encoder(out_channels=self.latent_channels, **common)
    self.decoder = Decoder(out_channels=self.out_channels, **common)
    if self.use_quant_conv:
      self.quant_conv = _conv(2 * self.latent_channels, self.dtype, kernel=1, padding=0)
    if self.use_post_quant_conv:
      self.post_quant_conv = _conv(self.latent_channels, self.dtype, kernel=1, padding=0)

  def encode(self, images):
    """(mean, logvar) [b, h/f, w/f, latent_channels] float32 of images NHWC in [-1, 1];
    logvar clamped to LOGVAR_RANGE as diffusers' DiagonalGaussianDistribution does."""
    moments = self.encoder(images)
    if self.use_quant_conv:
      moments = self.quant_conv(moments)
    mean, logvar = jnp.split(moments.astype(jnp.float32), 2, axis=-1)
    return mean, jnp.clip(logvar, *LOGVAR_RANGE)

  def decode(self, latents):
    """Images NHWC in about [-1, 1] (not clipped) of unscaled latents: divide what a diffusion
    model produces by `scaling_factor` (and add `shift_factor`) first, or use decode_latents."""
    if self.use_post_quant_conv:
      latents = self.post_quant_conv(latents)
    return self.decoder(latents).astype(jnp.float32)

  def __call__(self, images, rng=None):
    """The reconstruction of `images`: decoded from the posterior's mean, or from a sample of
    it given `rng`."""
    mean, logvar = self.encode(images)
    if rng is not None:
      mean = mean + jnp.exp(0.5 * logvar) * jax.random.normal(rng, mean.shape)
    return self.decode(mean)


def load(path, **module_kwargs):
  """(AutoencoderKL, params) of a diffusers VAE folder (config.json and
  diffusion_pytorch_model.safetensors), local, gs:// or hf:// (e.g.
  hf://stabilityai/sd-vae-ft-ema); see vit_jax/checkpoints/vae_format.py."""
  from vit_jax.checkpoints import vae_format  # file formats live in checkpoints/

  return vae_format.load(path, **module_kwargs)
