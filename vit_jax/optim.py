"""Learning-rate schedules and optimizers: SGD+momentum (the original) and AdamW (PiT).

Config fields read: base_lr, warmup_steps, total_steps, decay_type, linear_end, optim,
momentum, adam_b1, adam_b2, weight_decay, grad_norm_clip.
"""
import jax
import jax.numpy as jnp
import optax

DECAY_TYPES = ('cosine', 'linear')
OPTIMIZERS = ('sgd', 'adamw')


def make_schedule(config):
  """Linear warmup from 0 to base_lr, then cosine or linear decay to 0 at total_steps.

  Linear decay ends at `linear_end * base_lr`, as the original.
  """
  if config.decay_type not in DECAY_TYPES:
    raise ValueError(f'config.decay_type={config.decay_type!r} is not one of {DECAY_TYPES}')
  base, warmup, total = config.base_lr, config.warmup_steps, config.total_steps
  if warmup >= total:
    raise ValueError(f'config.warmup_steps={warmup} must be below config.total_steps={total}')

  def schedule(step):
    step = jnp.asarray(step, jnp.float32)
    progress = jnp.clip((step - warmup) / (total - warmup), 0., 1.)
    if config.decay_type == 'cosine':
      decay = 0.5 * (1. + jnp.cos(jnp.pi * progress))
    else:
      decay = config.linear_end + (1. - config.linear_end) * (1. - progress)
    warm = jnp.minimum(1., step / warmup) if warmup else 1.
    return base * warm * decay
  return schedule


def _decay_mask(params):
  """Weight decay on matrices and kernels only (not biases, norms, embeddings' cls)."""
  return jax.tree.map(lambda p: p.ndim > 1, params)


def make_optimizer(config):
  """optax transformation: global-norm clipping, then SGD+momentum or AdamW."""
  schedule = make_schedule(config)
  if config.optim == 'sgd':
    tx = optax.sgd(schedule, momentum=config.momentum)
  elif config.optim == 'adamw':
    tx = optax.adamw(schedule, b1=config.adam_b1, b2=config.adam_b2,
                     weight_decay=config.weight_decay, mask=_decay_mask)
  else:
    raise ValueError(f'config.optim={config.optim!r} is not one of {OPTIMIZERS}')
  if config.grad_norm_clip:
    tx = optax.chain(optax.clip_by_global_norm(config.grad_norm_clip), tx)
  return tx, schedule
