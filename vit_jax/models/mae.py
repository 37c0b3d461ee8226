"""Masked autoencoder (MAE, He et al. 2022) on ViT patch tokens or PiT pixel tokens.

A random `mask_ratio` of each image's tokens is dropped; `VisionTransformer`'s own embedding
and transformer encode the rest (position embeddings taken for the kept tokens); a light
decoder (its own width, depth, heads, position embedding and a learned mask token) sees every
position again and predicts the values of each token: p*p*channels numbers per p x p patch,
`channels` per pixel for PiT. The loss is the mean squared error over the masked tokens only.

The encoder is a `VisionTransformer(num_classes=0)` named `encoder`: `params['encoder']` is a
classifier's parameter tree without its head, so `checkpoint.save(params['encoder'], path)`
and `config.pretrained_path=path` fine-tune it (head reset, as for any pre-trained file).
"""

from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from vit_jax.models import vit

Dtype = Any
# Masks of calls without a 'masking' rng (init, evaluation) come from this fixed key, so an
# evaluation scores every step's model on the same masks.
EVAL_MASKING_SEED = 0


def num_visible(num_tokens, mask_ratio):
  """Tokens the encoder keeps: int(num_tokens * (1 - mask_ratio)), as MAE; at least 1."""
  if not 0.0 <= mask_ratio < 1.0:
    raise ValueError(f'mask_ratio={mask_ratio} must be in [0, 1) (MAE: 0.75)')
  return max(1, int(num_tokens * (1.0 - mask_ratio)))


def random_masking(rng, batch, num_tokens, mask_ratio):
  """Per-example random subsets of the tokens, by sorting uniform noise (as MAE).

  Returns (visible [batch, k] token indices in shuffled order, restore [batch, num_tokens]:
  where each token sits in the shuffled order, mask [batch, num_tokens]: 1. where dropped).
  """
  keep = num_visible(num_tokens, mask_ratio)
  shuffle = jnp.argsort(jax.random.uniform(rng, (batch, num_tokens)), axis=1)
  restore = jnp.argsort(shuffle, axis=1)
  return shuffle[:, :keep], restore, (restore >= keep).astype(jnp.float32)


def unshuffle(visible, mask_token, restore):
  """Every token position in image order [batch, tokens, width]: the encoded visible tokens
  (in the shuffled order of `random_masking`) where they came from, `mask_token` elsewhere."""
  n, k, width = visible.shape
  dropped = jnp.broadcast_to(mask_token.astype(visible.dtype), (n, restore.shape[1] - k, width))
  shuffled = jnp.concatenate([visible, dropped], axis=1)
  return jnp.take_along_axis(shuffled, restore[..., None], axis=1)


def patchify(images, patch_size):
  """[n, h, w, c] -> [n, (h/ph)*(w/pw), ph*pw*c]: tokens row-major, values (y, x, c) inside."""
  n, h, w, c = images.shape
  ph, pw = patch_size
  x = images.reshape(n, h // ph, ph, w // pw, pw, c).transpose(0, 1, 3, 2, 4, 5)
  return x.reshape(n, (h // ph) * (w // pw), ph * pw * c)


def unpatchify(tokens, patch_size, image_shape):
  """Inverse of `patchify` for images of `image_shape` (h, w, c)."""
  h, w, c = image_shape
  ph, pw = patch_size
  x = tokens.reshape(tokens.shape[0], h // ph, w // pw, ph, pw, c).transpose(0, 1, 3, 2, 4, 5)
  return x.reshape(tokens.shape[0], h, w, c)


def reconstruction_target(images, patch_size, norm_pix_loss):
  """Per-token values to predict; with `norm_pix_loss` each token normalised by its own mean
  and variance (MAE's option). A 1x1 token of a 1-channel image has one value, which that
  normalisation turns into 0: config checks reject the combination."""
  target = patchify(images.astype(jnp.float32), patch_size)
  if norm_pix_loss:
    mean = target.mean(-1, keepdims=True)
    var = target.var(-1, keepdims=True)
    target = (target - mean) / jnp.sqrt(var + 1e-6)
  return target


def per_example_loss(predictions, target, mask):
  """Mean squared error over each example's masked tokens [batch]; visible tokens count 0."""
  per_token = jnp.mean(jnp.square(predictions.astype(jnp.float32) - target), axis=-1)
  return jnp.sum(per_token * mask, axis=1) / jnp.maximum(jnp.sum(mask, axis=1), 1.0)


class MaskedAutoencoder(nn.Module):
  """`MaskedAutoencoder(encoder=config.model, decoder=config.mae.decoder, ...)`.

  `apply(..., images, train=True, rngs={'masking': key, 'dropout': key})` returns
  (predictions [batch, tokens, values per token], mask [batch, tokens], 1. where dropped).
  `encoder` holds `VisionTransformer`'s fields (patches, transformer, hidden_size, classifier,
  posemb, ...); `decoder` holds hidden_size, num_layers, num_heads, mlp_dim and posemb
  ('sincos2d', MAE's fixed embedding, or 'learn'). The decoder runs the encoder's attention
  schedule (`transformer.attention`).
  """

  encoder: Mapping[str, Any]
  decoder: Mapping[str, Any]
  mask_ratio: float = 0.75
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, images, *, train):
    if self.encoder.get('resnet') is not None:
      raise ValueError(
          'MAE masks patch tokens of the image itself; a ResNet stem (hybrid '
          'model) is not supported. Pick a ViT or PiT model.'
      )
    n, h, w, c = images.shape
    ph, pw = self.encoder['patches']['size']
    grid_h, grid_w = h // ph, w // pw
    num_tokens = grid_h * grid_w
    rng = (
        self.make_rng('masking')
        if self.has_rng('masking')
        else jax.random.PRNGKey(EVAL_MASKING_SEED)
    )
    visible, restore, mask = random_masking(rng, n, num_tokens, self.mask_ratio)

    encoder = vit.VisionTransformer(
        num_classes=0,
        dtype=self.dtype,
        param_dtype=self.param_dtype,
        name='encoder',
        **self.encoder,
    )
    tokens = encoder(images, train=train, visible_tokens=visible)
    prefix = tokens.shape[1] - visible.shape[1]

    width = self.decoder['hidden_size']
    dense = lambda features, name: nn.Dense(
        features,
        dtype=self.dtype,
        param_dtype=self.param_dtype,
        kernel_init=nn.initializers.xavier_uniform(),
        name=name,
    )
    x = dense(width, 'decoder_embed')(tokens)
    mask_token = self.param(
        'mask_token', nn.initializers.normal(stddev=0.02), (1, 1, width), self.param_dtype
    )
    x = jnp.concatenate([x[:, :prefix], unshuffle(x[:, prefix:], mask_token, restore)], axis=1)

    attention = (self.encoder.get('transformer') or {}).get('attention')
    x = vit.Encoder(
        num_layers=self.decoder['num_layers'],
        mlp_dim=self.decoder['mlp_dim'],
        num_heads=self.decoder['num_heads'],
        posemb=self.decoder.get('posemb', 'sincos2d'),
        dropout_rate=0.0,
        attention_dropout_rate=0.0,
        attention=attention,
        dtype=self.dtype,
        param_dtype=self.param_dtype,
        name='decoder',
    )(x, train=train, grid_shape=(grid_h, grid_w), num_prefix_tokens=prefix)
    predictions = dense(ph * pw * c, 'decoder_pred')(x[:, prefix:])
    return predictions, mask
