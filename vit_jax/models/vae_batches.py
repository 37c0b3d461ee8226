"""Encoding and decoding many images with a VAE, a fixed-size batch at a time.

One jitted function per direction runs every batch (the last one padded), so a program
compiles once and holds one batch's activations: 256x256 and 512x512 images fit accelerator
memory at any count. Results come back to the host batch by batch as numpy arrays, the next
batch already dispatched while the previous one is copied.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np

from vit_jax import errors

DEFAULT_BATCH_SIZE = 8


@functools.partial(jax.jit, static_argnums=0)
def _encode(module, params, images, noise):
  # Zero noise for the mean: one program for both (exp(logvar / 2) is finite, logvar clamped).
  mean, logvar = module.apply({'params': params}, images, method='encode')
  return (mean + jnp.exp(0.5 * logvar) * noise - module.shift_factor) * module.scaling_factor


@functools.partial(jax.jit, static_argnums=(0, 3))
def _decode(module, params, latents, clip):
  images = module.apply(
      {'params': params}, latents / module.scaling_factor + module.shift_factor, method='decode'
  )
  return jnp.clip(images, -1.0, 1.0) if clip else images


def decode_on_devices(module, params, latents, clip=True):
  """Images of scaled latents already laid out on the devices (e.g. a global array sharded
  over the batch), in one call: each device decodes its own part of the batch at once."""
  return _decode(module, params, latents, clip)


def _check(name, array, channels, factor, batch_size):
  if not isinstance(batch_size, int) or batch_size < 1:
    raise errors.UserInputError(f'batch_size={batch_size!r} must be a positive integer')
  shape = np.shape(array)
  if len(shape) != 4 or shape[-1] != channels or shape[1] % factor or shape[2] % factor:
    sizes = f' with H and W multiples of {factor}; crop or resize them' if factor > 1 else ''
    raise errors.UserInputError(
        f'{name} of shape {list(shape)}: expected [N, H, W, {channels}] (NHWC){sizes}.'
    )


def _batches(run, arrays, batch_size, sharding=None):
  """numpy outputs of `run(*batches)` over the leading axis of `arrays`, `batch_size` at a
  time; each batch is converted to float32 (and the last one padded) only when it is sent,
  and laid out with `sharding` when given (a batch split over several devices)."""
  n = len(arrays[0])
  out, pending = [], None
  for start in range(0, n, batch_size):
    chunks = [np.asarray(a[start : start + batch_size], np.float32) for a in arrays]
    short = batch_size - len(chunks[0])
    chunks = [np.pad(c, [(0, short)] + [(0, 0)] * (c.ndim - 1)) for c in chunks]
    if sharding is not None:
      chunks = [jax.device_put(c, sharding) for c in chunks]
    result = run(*chunks)  # dispatched; the previous batch is copied out meanwhile
    if pending is not None:
      out.append(np.asarray(pending))
    pending = result
  out.append(np.asarray(pending))
  return np.concatenate(out)[:n]


def encode_to_latents(
    module, params, images, rng=None, batch_size=DEFAULT_BATCH_SIZE, sharding=None, noise=None
):
  """Latents for a diffusion model [N, H/f, W/f, latent_channels] of images NHWC in [-1, 1]:
  a sample of the posterior (given `rng`) or its mean, minus `shift_factor`, times
  `scaling_factor`. The same `rng` gives the same latents at any batch size. `noise`, the
  posterior's standard-normal draws [N, H/f, W/f, latent_channels], replaces `rng` (a caller
  that draws them per image). `sharding` (e.g. the batch axis over every local device) lays
  out each batch of `batch_size`."""
  f, channels = module.downsample_factor, module.in_channels
  _check('images', images, channels, f, batch_size)
  n, h, w, _ = np.shape(images)
  shape = (n, h // f, w // f, module.latent_channels)
  if not n:
    return np.zeros(shape, np.float32)
  if noise is not None:
    if np.shape(noise) != shape:
      raise ValueError(f'noise of shape {np.shape(noise)}, expected {shape}')
  elif rng is None:
    noise = np.zeros(shape, np.float32)
  else:
    noise = np.asarray(jax.random.normal(rng, shape))
  encode = functools.partial(_encode, module, params)
  return _batches(encode, (images, noise), batch_size, sharding)


def decode_latents(module, params, latents, batch_size=DEFAULT_BATCH_SIZE, clip=True):
  """Images NHWC [N, H*f, W*f, out_channels] of a diffusion model's (scaled) latents: divided
  by `scaling_factor`, plus `shift_factor`, decoded, clipped to [-1, 1] unless clip=False."""
  _check('latents', latents, module.latent_channels, 1, batch_size)
  n, h, w, _ = np.shape(latents)
  if not n:
    f = module.downsample_factor
    return np.zeros((0, h * f, w * f, module.out_channels), np.float32)
  run = functools.partial(_decode, module, params)
  return _batches(lambda x: run(x, clip), (latents,), batch_size)
