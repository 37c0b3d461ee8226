"""Class-conditional DiT sampling with classifier-free guidance, as the original's sample.py.

With cfg_scale > 1 the batch is doubled: the same starting noise with the requested labels
and with the null class; the model runs through `DiT.forward_with_cfg` and the first half is
returned. cfg_scale = 1 samples unguided with the plain forward pass. Settings are checked
when the sampler is made and labels on every call, before anything compiles.
"""

import jax
import jax.numpy as jnp
import numpy as np

from vit_jax import errors
from vit_jax.models import dit

SAMPLERS = ('ddpm', 'ddim')


def make_sampler(
    model,
    diffusion,
    image_shape,
    *,
    sampler='ddpm',
    cfg_scale=1.0,
    guide_channels=3,
    clip_denoised=False,
    eta=0.0,
):
  """A jitted `sample(params, labels, key) -> [batch, H, W, C]` for a DiT `model`.

  `image_shape` (H, W, C) is the model's input (latents for latent DiTs); `sampler` 'ddpm'
  (ancestral, DiT's default) or 'ddim' (with `eta`); `guide_channels` as in
  DiT.forward_with_cfg. clip_denoised=False as the original samples latents.
  """
  if sampler not in SAMPLERS:
    raise errors.UserInputError(f'sampler={sampler!r} is not one of {SAMPLERS}')
  dit.check_cfg_scale(cfg_scale)
  guided = float(cfg_scale) > 1
  if guided and not model.class_dropout_prob > 0:
    raise errors.UserInputError(
        f'cfg_scale={cfg_scale} needs the null class, but the model has '
        'class_dropout_prob=0 (no null class); sample with cfg_scale=1.'
    )
  if model.learn_sigma != diffusion.learn_sigma:
    raise errors.UserInputError(
        f'the model has learn_sigma={model.learn_sigma} but the diffusion '
        f'learn_sigma={diffusion.learn_sigma}; create_diffusion(..., '
        f'learn_sigma={model.learn_sigma}).'
    )
  if len(image_shape) != 3:
    raise errors.UserInputError(f'image_shape={image_shape} must be (height, width, channels)')

  def run(params, labels, key):
    labels = labels.astype(jnp.int32)
    n = labels.shape[0]
    key, noise_key = jax.random.split(key)
    noise = jax.random.normal(noise_key, (n,) + tuple(image_shape), jnp.float32)
    if guided:
      noise = jnp.concatenate([noise, noise])
      labels = jnp.concatenate([labels, jnp.full_like(labels, model.num_classes)])
      model_fn = lambda x, t: model.apply(
          {'params': params},
          x,
          t,
          labels,
          cfg_scale,
          guide_channels=guide_channels,
          method=dit.DiT.forward_with_cfg,
      )
    else:
      model_fn = lambda x, t: model.apply({'params': params}, x, t, labels, train=False)
    if sampler == 'ddpm':
      out = diffusion.p_sample_loop(
          model_fn, noise.shape, key, noise=noise, clip_denoised=clip_denoised
      )
    else:
      out = diffusion.ddim_sample_loop(
          model_fn, noise.shape, key, noise=noise, clip_denoised=clip_denoised, eta=eta
      )
    return out[:n]

  compiled = jax.jit(run)

  def sample(params, labels, key):
    if np.ndim(labels) != 1:
      raise errors.UserInputError(
          f'labels must be a 1-D array of class ids, got {np.shape(labels)}'
      )
    dit.check_labels(
        _local_values(labels),
        model.num_classes,
        allow_null=False,
        has_null=model.class_dropout_prob > 0,
        field='labels',
    )
    if not isinstance(labels, jax.Array):  # a global array keeps its sharding
      labels = jnp.asarray(labels, jnp.int32)
    return compiled(params, labels, key)

  return sample


def _local_values(labels):
  """The labels this process holds: all of a numpy array, its own shards of a global
  jax.Array spread over processes (each process checks its part before the collective)."""
  if not dit.is_concrete(labels):  # traced inside a caller's jit: nothing to check yet
    return labels
  if isinstance(labels, jax.Array) and not labels.is_fully_addressable:
    return np.concatenate([np.asarray(s.data).ravel() for s in labels.addressable_shards])
  return np.asarray(labels)
