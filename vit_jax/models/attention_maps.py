"""What a ViT or PiT attends to: per-layer, per-head attention maps and attention rollout.

Maps come from the model itself: `sow_attention_weights=True` makes every block record its
softmax weights [batch, heads, queries, keys] (a scanned encoder records them stacked on a
leading layer axis). Rollout (Abnar & Zuidema, 2020) averages the
heads, mixes in the residual connection (0.5 A + 0.5 I), renormalises the rows and multiplies
through the layers. For PiT every grid token is one pixel, so the map has one weight per pixel.
"""

import jax
import numpy as np

from vit_jax.models import layer_stack
from vit_jax.models import resnet


def grid_shape(model, image_hw):
  """Token grid (h, w) of `model` for images of size image_hw."""
  ph, pw = model.patches['size']
  stem = resnet.stem_downsampling(model.resnet)
  return image_hw[0] // (ph * stem), image_hw[1] // (pw * stem)


def num_prefix_tokens(model):
  return 1 if model.classifier in ('token', 'token_unpooled') else 0


def attention_maps(model, params, images):
  """Per-layer attention weights, a list of numpy [batch, heads, tokens, tokens]."""
  sowing = model.clone(sow_attention_weights=True)
  _, state = jax.jit(
      lambda p, x: sowing.apply({'params': p}, x, train=False, mutable=['intermediates'])
  )(params, images)
  encoder = state['intermediates']['Transformer']
  if layer_stack.SCANNED_BLOCK in encoder:
    stacked = encoder[layer_stack.SCANNED_BLOCK]['MultiHeadDotProductAttention_0']
    return list(np.asarray(stacked['attention_weights'][0]))
  layers = sorted(
      (k for k in encoder if k.startswith('encoderblock_')), key=lambda k: int(k.split('_')[1])
  )
  return [
      np.asarray(encoder[k]['MultiHeadDotProductAttention_0']['attention_weights'][0])
      for k in layers
  ]


def rollout(maps, prefix_tokens):
  """Attention rollout per image over the grid tokens, a numpy [batch, grid_tokens].

  With a class token: how much the class token draws on each grid token. Without one (gap):
  the mean over all query tokens.
  """
  joint = None
  for weights in maps:
    a = weights.mean(axis=1)
    a = 0.5 * a + 0.5 * np.eye(a.shape[-1])[None]
    a = a / a.sum(axis=-1, keepdims=True)
    joint = a if joint is None else a @ joint
  if prefix_tokens:
    result = joint[:, 0, prefix_tokens:]
  else:
    result = joint.mean(axis=1)
  return result / result.sum(axis=-1, keepdims=True)


def to_heatmap(token_weights, grid, image_hw):
  """[batch, h*w] weights -> [batch, H, W] in [0, 1], upsampled to the image (nearest)."""
  maps = token_weights.reshape((-1,) + tuple(grid))
  maps = maps - maps.min(axis=(1, 2), keepdims=True)
  maps = maps / np.maximum(maps.max(axis=(1, 2), keepdims=True), 1e-12)
  ry, rx = image_hw[0] // grid[0], image_hw[1] // grid[1]
  return np.repeat(np.repeat(maps, ry, axis=1), rx, axis=2)


def rollout_heatmaps(model, params, images):
  """Rollout heatmaps [batch, H, W] over `images` (NHWC) for a ViT, hybrid or PiT."""
  maps = attention_maps(model, params, images)
  grid = grid_shape(model, images.shape[1:3])
  return to_heatmap(rollout(maps, num_prefix_tokens(model)), grid, images.shape[1:3])


def head_maps(maps, layer, prefix_tokens, grid, query=0):
  """[heads, h, w] attention of one query token (default: the class token) in one layer."""
  weights = maps[layer][0, :, query, prefix_tokens:]
  return weights.reshape((weights.shape[0],) + tuple(grid))
