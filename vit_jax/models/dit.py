"""Diffusion Transformer (DiT, Peebles & Xie 2023), numerically faithful to facebookresearch/DiT.

`DiT(num_classes=1000, **MODEL_CONFIGS['DiT-XL/2'])` predicts the noise (and, with
`learn_sigma`, the variance interpolation) of NHWC latents:
`model.apply({'params': p}, x, t, y, train=False)` -> [batch, H, W, 2 * C]. In training pass
`rngs={'dropout': key}` for the label dropout of classifier-free guidance. `forward_with_cfg`
(via `method=DiT.forward_with_cfg`) runs the guided forward pass of the original's sampler.

Layers and parameter names: dit_layers.py; released checkpoints: dit_format.py. The
position embedding is a constant (the original's frozen buffer), not a parameter.
`scan_layers=True` runs one block under nn.scan (parameters `blocks/...` with a leading
[depth] axis, compile time independent of depth); `remat` ('full', 'dots') recomputes block
activations in the backward pass; attention runs through vit_jax.attention (`attention`
holds its impl, block_size, kernel options), so every schedule serves DiT as it serves ViT.
"""

from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from vit_jax import attention as attention_lib
from vit_jax import errors
from vit_jax.models import dit_layers
from vit_jax.models.vit import REMAT
from vit_jax.models.vit import remat_policy

Dtype = Any
# Name of the one block of a scanned DiT; its parameters have a leading [depth] axis.
SCANNED_BLOCK = 'blocks'


def is_concrete(x):
  """Whether x holds values now (not a tracer inside jit / grad / vmap)."""
  return not isinstance(x, jax.core.Tracer)


def check_labels(labels, num_classes, *, allow_null, has_null=True, field='y'):
  """Raises a UserInputError for a class id outside the model's range (concrete labels only).

  `allow_null`: whether id `num_classes` (the null class of classifier-free guidance, which
  the model `has_null`) is allowed. Traced labels cannot be checked and pass.
  """
  if labels is None or not is_concrete(labels):
    return
  labels = np.asarray(labels)
  if labels.dtype.kind not in 'iu':
    raise errors.UserInputError(f'{field} must hold integer class ids, got dtype {labels.dtype}')
  top = num_classes if allow_null else num_classes - 1
  bad = labels[(labels < 0) | (labels > top)]
  if bad.size:
    if has_null and not allow_null and int(bad[0]) == num_classes:
      raise errors.UserInputError(
          f'{field} asks for class {num_classes}, the null class of classifier-free guidance; '
          f'sample real classes 0..{num_classes - 1} (guidance adds the null half itself).'
      )
    raise errors.UserInputError(
        f'{field} holds class id {int(bad[0])}, outside 0..{top} of a model with '
        f'num_classes={num_classes}; pass ids in that range.'
    )


def check_cfg_scale(cfg_scale):
  """cfg_scale >= 1 (1 means no guidance); traced values pass."""
  if is_concrete(cfg_scale) and np.ndim(cfg_scale) == 0 and float(cfg_scale) < 1:
    raise errors.UserInputError(
        f'cfg_scale={float(cfg_scale)} is below 1; classifier-free guidance scales are >= 1 '
        '(1 = unguided, DiT samples with 1.5 for FID and 4.0 for pictures).'
    )


def unpatchify(tokens, grid_shape, patch_size, channels):
  """[n, h*w, p*p*c] tokens (row-major patches, each p x p x c) -> NHWC [n, h*p, w*p, c]."""
  h, w = grid_shape
  p = patch_size
  n = tokens.shape[0]
  x = tokens.reshape(n, h, w, p, p, channels)
  return x.transpose(0, 1, 3, 2, 4, 5).reshape(n, h * p, w * p, channels)


class DiT(nn.Module):
  """Diffusion Transformer with adaLN-Zero blocks; see the module docstring."""

  num_classes: int
  patch_size: int = 2
  hidden_size: int = 1152
  depth: int = 28
  num_heads: int = 16
  mlp_ratio: float = 4.0
  class_dropout_prob: float = 0.1
  learn_sigma: bool = True
  attention: Mapping[str, Any] | None = None
  scan_layers: bool = False
  remat: str = 'none'
  grads_as_dots: bool = False  # the CPU recipe's backward (dit_layers.py); same numbers
  model_name: str | None = None
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  def _validate(self, x, t, y):
    if x.ndim != 4:
      raise errors.UserInputError(f'DiT expects NHWC inputs, got shape {x.shape}')
    _, h, w, _ = x.shape
    p = self.patch_size
    if h % p or w % p:
      raise errors.UserInputError(
          f'input size {h}x{w} is not divisible by patch_size={p} ({self.model_name or "DiT"}); '
          f'resize the images / latents to a multiple of {p} or pick a model with a smaller '
          'patch.'
      )
    if self.hidden_size % self.num_heads:
      raise errors.UserInputError(
          f'hidden_size={self.hidden_size} is not divisible by num_heads={self.num_heads}'
      )
    if self.remat not in REMAT:
      raise errors.UserInputError(f'remat={self.remat!r} is not one of {REMAT}')
    for field in ('scan_layers', 'grads_as_dots'):
      if not isinstance(getattr(self, field), bool):
        raise errors.UserInputError(f'{field}={getattr(self, field)!r} must be True or False')
    attention_lib.validate_options(**dict(self.attention or {}))
    for name, value in (('t', t), ('y', y)):
      if jnp.shape(value) != (x.shape[0],):
        raise errors.UserInputError(
            f'DiT {name} must have shape [batch]=({x.shape[0]},), got {jnp.shape(value)}'
        )
    has_null = self.class_dropout_prob > 0
    check_labels(y, self.num_classes, allow_null=has_null, has_null=has_null)

  @nn.compact
  def __call__(self, x, t, y, *, train, force_drop_ids=None):
    self._validate(x, t, y)
    _, h, w, c = x.shape
    p = self.patch_size
    grid = (h // p, w // p)
    out_channels = 2 * c if self.learn_sigma else c
    kwargs = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    tokens = dit_layers.PatchEmbed(self.hidden_size, p, name='x_embedder', **kwargs)(
        x.astype(self.dtype)
    )
    posemb = dit_layers.sincos_2d(grid, self.hidden_size).astype(np.float32)
    tokens = tokens + jnp.asarray(posemb, tokens.dtype)[None]
    cond = dit_layers.TimestepEmbedder(self.hidden_size, name='t_embedder', **kwargs)(t)
    cond = cond + dit_layers.LabelEmbedder(
        self.num_classes, self.hidden_size, self.class_dropout_prob, name='y_embedder', **kwargs
    )(y, train=train, force_drop_ids=force_drop_ids)
    tokens = self._blocks(tokens, cond)
    tokens = dit_layers.FinalLayer(
        p, out_channels, name='final_layer', grads_as_dots=self.grads_as_dots, **kwargs
    )(tokens, cond)
    return unpatchify(tokens, grid, p, out_channels)

  def _blocks(self, x, cond):
    block = lambda name: dit_layers.DiTBlock(
        self.num_heads,
        self.mlp_ratio,
        self.attention,
        self.dtype,
        self.param_dtype,
        self.grads_as_dots,
        name=name,
    )

    def run(module, x, cond):
      return module(x, cond)

    if self.remat != 'none':
      # Inside nn.scan the loop already keeps XLA from merging the recomputation away.
      run = nn.remat(run, policy=remat_policy(self.remat), prevent_cse=not self.scan_layers)
    if not self.scan_layers:
      for layer in range(self.depth):
        x = run(block(f'blocks_{layer}'), x, cond)
      return x
    scanned = nn.scan(
        lambda module, x, cond: (run(module, x, cond), None),
        variable_axes={'params': 0},
        split_rngs={'params': True},
        in_axes=nn.broadcast,
        length=self.depth,
    )
    x, _ = scanned(block(SCANNED_BLOCK), x, cond)
    return x

  def forward_with_cfg(self, x, t, y, cfg_scale, guide_channels: int | None = 3):
    """Classifier-free guided prediction, as the original's sampler calls it.

    The batch's first half is conditional (real labels), its second half the same inputs with
    the null class. One forward pass runs on [first half, first half]; the first
    `guide_channels` output channels (3 in the original, "for exact reproducibility"; None:
    all input channels, the standard recipe) become uncond + cfg_scale * (cond - uncond) in
    both halves; the other channels (the rest of eps, the variance) are passed through.
    """
    n, _, _, c = x.shape
    if n % 2:
      raise errors.UserInputError(
          f'forward_with_cfg takes a batch of conditional + null-class halves; got an odd '
          f'batch of {n}: concatenate [x, x] with labels [y, null].'
      )
    guide = c if guide_channels is None else guide_channels
    if not 1 <= guide <= c:
      raise errors.UserInputError(
          f'guide_channels={guide_channels} must be in 1..{c} (the '
          'input channels) or None for all of them'
      )
    check_cfg_scale(cfg_scale)
    half = x[: n // 2]
    out = self(jnp.concatenate([half, half]), t, y, train=False)
    eps, rest = out[..., :guide], out[..., guide:]
    cond_eps, uncond_eps = jnp.split(eps, 2)
    guided = uncond_eps + cfg_scale * (cond_eps - uncond_eps)
    return jnp.concatenate([jnp.concatenate([guided, guided]), rest], axis=-1)


def from_config(config, num_classes, **overrides):
  """DiT from a MODEL_CONFIGS entry (a ConfigDict or dict) and `num_classes`."""
  return DiT(num_classes=num_classes, **dict(config, **overrides))


def parameter_count(model, input_shape, in_dtype=jnp.float32):
  """Trainable parameters of `model` for NHWC `input_shape`, without allocating them."""
  x = jax.ShapeDtypeStruct(input_shape, in_dtype)
  t = jax.ShapeDtypeStruct(input_shape[:1], jnp.int32)
  y = jax.ShapeDtypeStruct(input_shape[:1], jnp.int32)
  shapes = jax.eval_shape(
      lambda x, t, y: model.init(jax.random.key(0), x, t, y, train=False), x, t, y
  )
  return sum(int(np.prod(s.shape)) for s in jax.tree.leaves(shapes['params']))
