"""Learning-rate schedules and optimizers: SGD+momentum (the original) and AdamW (PiT).

Config fields read: base_lr, warmup_steps, total_steps, decay_type, linear_end, optim,
momentum, adam_b1, adam_b2, weight_decay, grad_norm_clip, layer_decay. The optimizer state
has the dtype of the parameters (`config.param_dtype`), whatever the compute dtype.
"""

import jax
import jax.numpy as jnp
import optax

from vit_jax import errors
from vit_jax.configs import schema
from vit_jax.models import layer_stack

DECAY_TYPES = schema.BY_NAME['decay_type'].choices
OPTIMIZERS = schema.BY_NAME['optim'].choices


def make_schedule(config):
  """Linear warmup from 0 to base_lr, then cosine decay to 0 or linear decay at total_steps.

  Linear decay ends at `linear_end * base_lr`, as the original.
  """
  if config.decay_type not in DECAY_TYPES:
    raise errors.UserInputError(
        f'config.decay_type={config.decay_type!r} is not one of ' f'{DECAY_TYPES}; pick one of them'
    )
  base, warmup, total = config.base_lr, config.warmup_steps, config.total_steps
  if not 0 <= warmup < total:
    raise errors.UserInputError(
        f'config.warmup_steps={warmup} must be in [0, '
        f'config.total_steps={total}); lower it or raise total_steps'
    )
  linear_end = config.linear_end if config.decay_type == 'linear' else 0.0

  def schedule(step):
    step = jnp.asarray(step, jnp.float32)
    progress = jnp.clip((step - warmup) / (total - warmup), 0.0, 1.0)
    if config.decay_type == 'cosine':
      decay = 0.5 * (1.0 + jnp.cos(jnp.pi * progress))
    else:
      decay = linear_end + (1.0 - linear_end) * (1.0 - progress)
    warm = jnp.minimum(1.0, step / warmup) if warmup else 1.0
    return base * warm * decay

  return schedule


def decay_mask(params):
  """Weight decay on matrices and kernels (ndim > 1); biases and LayerNorm scales are exempt.

  The ndim is per layer: a scanned encoder's stacked leading layer axis does not count.
  """

  def one(path, p):
    stacked = layer_stack.is_stacked_path(jax.tree_util.keystr(path, simple=True, separator='/'))
    return p.ndim - stacked > 1

  return jax.tree_util.tree_map_with_path(one, params)


def layer_id(path, num_layers):
  """Depth of a ViT parameter for layer-wise lr decay: 0 for the embedding, class token and
  position embedding, i + 1 for encoderblock_i, num_layers + 1 for everything after the
  encoder (final norm, pooling head, pre_logits, head), as BEiT and MAE fine-tuning count."""
  parts = path.split('/')
  if parts[0] in ('embedding', 'cls') or 'posembed_input' in parts:
    return 0
  for part in parts:
    if part.startswith('encoderblock_'):
      return int(part[len('encoderblock_') :]) + 1
  return num_layers + 1


def layer_decay_scales(params, decay):
  """Per-parameter learning-rate factors decay ** (num_layers + 1 - layer_id); a scanned
  encoder's stacked block gets one factor per layer along its leading axis."""
  depth = layer_stack.num_layers(params)

  def one(path, p):
    name = jax.tree_util.keystr(path, simple=True, separator='/')
    if layer_stack.is_stacked_path(name):
      ids = jnp.arange(1, depth + 1, dtype=jnp.float32).reshape((-1,) + (1,) * (p.ndim - 1))
    else:
      ids = jnp.float32(layer_id(name, depth))
    return jnp.asarray(decay, jnp.float32) ** (depth + 1 - ids)

  return jax.tree_util.tree_map_with_path(one, params)


def scale_by_layer_decay(decay):
  """Multiplies each update by `layer_decay_scales` (a stateless optax transformation)."""

  def update(updates, state, params=None):
    del params
    scales = layer_decay_scales(updates, decay)
    return jax.tree.map(lambda u, f: (u * f).astype(u.dtype), updates, scales), state

  return optax.GradientTransformation(lambda params: optax.EmptyState(), update)


def _check_unit_interval(config, fields):
  for field in fields:
    value = config[field]
    if not 0.0 <= value < 1.0:
      raise errors.UserInputError(f'config.{field}={value} must be in [0, 1), e.g. 0.9')


def make_optimizer(config):
  """(optax transformation, schedule): global-norm clipping, then SGD+momentum or AdamW.

  SGD adds `weight_decay * param` to the gradient (L2, before momentum); AdamW decays
  decoupled from the adaptive update. Both leave biases and norm scales undecayed.
  """
  schedule = make_schedule(config)
  if config.weight_decay < 0:
    raise errors.UserInputError(
        f'config.weight_decay={config.weight_decay} must be >= 0; ' '0 turns weight decay off'
    )
  if config.optim == 'sgd':
    _check_unit_interval(config, ('momentum',))
    tx = optax.sgd(schedule, momentum=config.momentum or None)
    if config.weight_decay:
      tx = optax.chain(optax.add_decayed_weights(config.weight_decay, decay_mask), tx)
  elif config.optim == 'adamw':
    _check_unit_interval(config, ('adam_b1', 'adam_b2'))
    tx = optax.adamw(
        schedule,
        b1=config.adam_b1,
        b2=config.adam_b2,
        weight_decay=config.weight_decay,
        mask=decay_mask,
    )
  else:
    raise errors.UserInputError(
        f'config.optim={config.optim!r} is not one of {OPTIMIZERS}; ' 'pick one of them'
    )
  decay = config.get('layer_decay', 1.0)
  if not (isinstance(decay, (int, float)) and 0 < decay <= 1):
    raise errors.UserInputError(
        f'config.layer_decay={decay!r} must be in (0, 1]; 1 turns '
        'layer-wise lr decay off (MAE fine-tuning: 0.75)'
    )
  if decay < 1:  # the update of layer i is scaled by decay ** (depth + 1 - i): lr and decay
    tx = optax.chain(tx, scale_by_layer_decay(decay))
  if config.grad_norm_clip:
    tx = optax.chain(optax.clip_by_global_norm(config.grad_norm_clip), tx)
  return tx, schedule
