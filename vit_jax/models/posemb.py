"""Position embeddings: learned (the original's), fixed 2-D sine-cosine, or none."""

from collections.abc import Callable
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

POSEMB_KINDS = ('learn', 'sincos2d', 'none')


def sincos2d(grid_shape: Sequence[int], width: int, temperature: float = 10_000.0):
  """Fixed [1, h*w, width] embedding: sin/cos of x and y at width/4 frequencies each."""
  h, w = grid_shape
  if width % 4:
    raise ValueError(
        f'posemb=sincos2d needs hidden_size divisible by 4, got {width}; '
        "use posemb='learn' or change hidden_size."
    )
  quarter = width // 4
  omega = 1.0 / temperature ** (np.arange(quarter) / max(quarter - 1, 1))
  ys, xs = np.meshgrid(np.arange(h), np.arange(w), indexing='ij')
  x_angles = xs.reshape(-1, 1) * omega[None]
  y_angles = ys.reshape(-1, 1) * omega[None]
  pe = np.concatenate(
      [np.sin(x_angles), np.cos(x_angles), np.sin(y_angles), np.cos(y_angles)], axis=1
  )
  return pe[None].astype(np.float32)


class AddPositionEmbs(nn.Module):
  """Adds a learned position embedding `pos_embedding` of shape [1, length, width].

  Length includes the class token when the model has one: the original adds the embedding
  after concatenating the class token.
  """

  posemb_init: Callable = nn.initializers.normal(stddev=0.02)
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, inputs):
    if inputs.ndim != 3:
      raise ValueError(f'AddPositionEmbs expects [batch, length, width], got {inputs.shape}')
    pe = self.param('pos_embedding', self.posemb_init, (1,) + inputs.shape[1:], self.param_dtype)
    return inputs + pe.astype(inputs.dtype)


def add_fixed_sincos2d(x, grid_shape: Sequence[int] | None, num_prefix_tokens: int):
  """Adds sincos2d to the grid tokens of `x`; prefix tokens (class token) get zeros."""
  if grid_shape is None:
    raise ValueError('posemb=sincos2d needs the token grid shape (h, w)')
  pe = sincos2d(grid_shape, x.shape[-1])
  if pe.shape[1] + num_prefix_tokens != x.shape[1]:
    raise ValueError(
        f'sincos2d grid {tuple(grid_shape)} + {num_prefix_tokens} prefix tokens '
        f'does not match sequence length {x.shape[1]}'
    )
  pe = np.concatenate([np.zeros((1, num_prefix_tokens, x.shape[-1]), np.float32), pe], 1)
  return x + jnp.asarray(pe, x.dtype)
