"""Vision Transformer (ViT) and Pixel Transformer (PiT = ViT with 1x1 patches).

Module and parameter names follow Google's original `vision_transformer` Linen code, so its
checkpoints load by renaming keys only. Defaults reproduce the original's numerics: tanh GELU,
LayerNorm eps 1e-6, zero-initialised head, N(0, 0.02) position embedding added after the class
token is concatenated, pre-norm blocks. `transformer.layer_norm_epsilon` and exact GELU
(`transformer.gelu_approximate=False`) serve checkpoints trained elsewhere (Hugging Face uses
1e-12 and erf GELU); `classifier='map'` is big_vision's attention-pooling head (`MAPHead_0`).
"""

from collections.abc import Mapping
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from vit_jax import attention
from vit_jax.models import attention_layer
from vit_jax.models import cpu_backward_layers
from vit_jax.models import patch_embedding
from vit_jax.models import posemb as posemb_lib
from vit_jax.models import resnet as resnet_lib

Dtype = Any
CLASSIFIERS = ('token', 'gap', 'map', 'unpooled', 'token_unpooled')
REMAT = ('none', 'full', 'dots')
# Name of the one block of a scanned encoder; its parameters have a leading [num_layers] axis.
SCANNED_BLOCK = 'encoderblock'


def remat_policy(remat):
  """jax.checkpoint policy of `transformer.remat` ('full' or 'dots').

  'full' keeps nothing and recomputes the whole block in the backward pass. 'dots' keeps the
  matmuls without batch dimensions (the q/k/v/out and MLP projections, linear in the tokens)
  and recomputes the batched ones (q.k^T and weights.v), whose [batch, heads, tokens, tokens]
  operands are the memory that grows quadratically with the tokens (PiT); `checkpoint_dots`
  would keep those too.
  """
  return {
      'full': jax.checkpoint_policies.nothing_saveable,
      'dots': jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
  }[remat]


class IdentityLayer(nn.Module):
  """Identity, named so that `pre_logits` appears in intermediates as in the original."""

  @nn.compact
  def __call__(self, x):
    return x


class MlpBlock(nn.Module):
  """Dense -> GELU -> dropout -> Dense -> dropout."""

  mlp_dim: int
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  out_dim: int | None = None
  dropout_rate: float = 0.1
  gelu_approximate: bool = True
  grads_as_dots: bool = False

  @nn.compact
  def __call__(self, inputs, *, deterministic):
    out_dim = inputs.shape[-1] if self.out_dim is None else self.out_dim
    dense_cls = cpu_backward_layers.Dense if self.grads_as_dots else nn.Dense
    dense = lambda features: dense_cls(
        features,
        dtype=self.dtype,
        param_dtype=self.param_dtype,
        kernel_init=nn.initializers.xavier_uniform(),
        bias_init=nn.initializers.normal(stddev=1e-6),
    )
    x = dense(self.mlp_dim)(inputs)
    x = nn.gelu(x, approximate=self.gelu_approximate)
    x = nn.Dropout(rate=self.dropout_rate)(x, deterministic=deterministic)
    x = dense(out_dim)(x)
    return nn.Dropout(rate=self.dropout_rate)(x, deterministic=deterministic)


def _layer_norm(grads_as_dots, epsilon, dtype, param_dtype, name=None):
  """flax.linen.LayerNorm, or with `grads_as_dots` its twin in cpu_backward_layers.py (the same
  parameters and forward; parameter gradients as matrix-vector products, for XLA:CPU)."""
  cls = cpu_backward_layers.LayerNorm if grads_as_dots else nn.LayerNorm
  return cls(epsilon=epsilon, dtype=dtype, param_dtype=param_dtype, name=name)


class Encoder1DBlock(nn.Module):
  """Pre-norm transformer block: x + MHA(LN(x)), then x + MLP(LN(x))."""

  mlp_dim: int
  num_heads: int
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  dropout_rate: float = 0.1
  attention_dropout_rate: float = 0.1
  gelu_approximate: bool = True
  attention: Mapping[str, Any] | None = None
  sow_attention_weights: bool = False
  layer_norm_epsilon: float = 1e-6
  grads_as_dots: bool = False

  @nn.compact
  def __call__(self, inputs, *, deterministic, mask=None):
    if inputs.ndim != 3:
      raise ValueError(f'Encoder1DBlock expects [batch, length, width], got {inputs.shape}')
    impl = (self.attention or {}).get('impl', 'auto')
    inputs = attention.constrain_tokens(inputs, impl)
    norm = lambda: _layer_norm(
        self.grads_as_dots, self.layer_norm_epsilon, self.dtype, self.param_dtype
    )
    x = norm()(inputs)
    attention_fn = attention_layer.make_attention_fn(self.attention)
    if self.grads_as_dots:
      x = cpu_backward_layers.MultiHeadDotProductAttention(
          num_heads=self.num_heads,
          dtype=self.dtype,
          param_dtype=self.param_dtype,
          deterministic=deterministic,
          dropout_rate=self.attention_dropout_rate,
          attention_fn=attention_fn,
      )(x, mask=mask, sow_weights=self.sow_attention_weights)
    else:
      x = nn.MultiHeadDotProductAttention(
          num_heads=self.num_heads,
          dtype=self.dtype,
          param_dtype=self.param_dtype,
          kernel_init=nn.initializers.xavier_uniform(),
          broadcast_dropout=False,
          deterministic=deterministic,
          dropout_rate=self.attention_dropout_rate,
          attention_fn=attention_fn,
      )(x, x, mask=mask, sow_weights=self.sow_attention_weights)
    x = nn.Dropout(rate=self.dropout_rate)(x, deterministic=deterministic)
    x = x + inputs

    y = norm()(x)
    y = MlpBlock(
        mlp_dim=self.mlp_dim,
        dtype=self.dtype,
        param_dtype=self.param_dtype,
        dropout_rate=self.dropout_rate,
        gelu_approximate=self.gelu_approximate,
        grads_as_dots=self.grads_as_dots,
    )(y, deterministic=deterministic)
    return attention.constrain_tokens(x + y, impl)


def keep_tokens(x, visible_tokens, num_prefix_tokens):
  """The prefix (class) tokens and the patch tokens at `visible_tokens` [batch, k], in that
  order: MAE's encoder input, taken after the position embedding was added."""
  prefix, patches = x[:, :num_prefix_tokens], x[:, num_prefix_tokens:]
  kept = jnp.take_along_axis(patches, visible_tokens[..., None].astype(jnp.int32), axis=1)
  return jnp.concatenate([prefix, kept], axis=1)


class Encoder(nn.Module):
  """Position embedding, `num_layers` blocks and the final `encoder_norm`.

  `scan_layers=True` runs one block under nn.scan (compile time independent of depth): its
  parameters are `encoderblock/...` with a leading [num_layers] axis (vit_jax/models/
  layer_stack.py converts to and from `encoderblock_N`), dropout keys are split per layer and
  sown attention weights are stacked the same way. `remat` ('full', 'dots') recomputes the
  block's activations in the backward pass (see `remat_policy`). `visible_tokens` [batch, k]
  keeps only those patch tokens (and the prefix) after the position embedding (MAE).
  `grads_as_dots=True` builds the blocks' Dense, LayerNorm and self-attention from
  cpu_backward_layers.py: the same parameters and forward, a backward written for XLA:CPU (the
  CPU recipes set it; on TPU and GPU XLA fuses the reductions it replaces).
  """

  num_layers: int
  mlp_dim: int
  num_heads: int
  dropout_rate: float = 0.1
  attention_dropout_rate: float = 0.1
  add_position_embedding: bool = True
  gelu_approximate: bool = True
  attention: Mapping[str, Any] | None = None
  posemb: str = 'learn'
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  sow_attention_weights: bool = False
  layer_norm_epsilon: float = 1e-6
  scan_layers: bool = False
  remat: str = 'none'
  grads_as_dots: bool = False

  @nn.compact
  def __call__(
      self,
      x,
      *,
      train,
      grid_shape: Sequence[int] | None = None,
      num_prefix_tokens: int = 0,
      visible_tokens=None,
  ):
    if self.add_position_embedding and self.posemb == 'learn':
      x = posemb_lib.AddPositionEmbs(param_dtype=self.param_dtype, name='posembed_input')(x)
    elif self.add_position_embedding and self.posemb == 'sincos2d':
      x = posemb_lib.add_fixed_sincos2d(x, grid_shape, num_prefix_tokens)
    if visible_tokens is not None:
      x = keep_tokens(x, visible_tokens, num_prefix_tokens)
    x = nn.Dropout(rate=self.dropout_rate)(x, deterministic=not train)
    x = self._blocks(x, deterministic=not train)
    return _layer_norm(
        self.grads_as_dots,
        self.layer_norm_epsilon,
        self.dtype,
        self.param_dtype,
        name='encoder_norm',
    )(x)

  def _blocks(self, x, *, deterministic):
    if self.remat not in REMAT:
      raise ValueError(f'transformer.remat={self.remat!r} is not one of {REMAT}')
    if not isinstance(self.scan_layers, bool):
      raise ValueError(f'transformer.scan_layers={self.scan_layers!r} must be True or False')
    block = lambda name: Encoder1DBlock(
        mlp_dim=self.mlp_dim,
        num_heads=self.num_heads,
        dtype=self.dtype,
        param_dtype=self.param_dtype,
        dropout_rate=self.dropout_rate,
        attention_dropout_rate=self.attention_dropout_rate,
        gelu_approximate=self.gelu_approximate,
        attention=self.attention,
        sow_attention_weights=self.sow_attention_weights,
        layer_norm_epsilon=self.layer_norm_epsilon,
        grads_as_dots=self.grads_as_dots,
        name=name,
    )

    def run(module, x):  # `deterministic` is closed over: a Python bool, never traced
      return module(x, deterministic=deterministic)

    if self.remat != 'none':
      # Inside nn.scan the loop already keeps XLA from merging the recomputation away.
      run = nn.remat(run, policy=remat_policy(self.remat), prevent_cse=not self.scan_layers)
    if not self.scan_layers:
      for layer in range(self.num_layers):
        x = run(block(f'encoderblock_{layer}'), x)
      return x
    scanned = nn.scan(
        lambda module, x, _: (run(module, x), None),
        variable_axes={'params': 0, 'intermediates': 0},
        split_rngs={'params': True, 'dropout': True},
        length=self.num_layers,
    )
    x, _ = scanned(block(SCANNED_BLOCK), x, None)
    return x


class MAPHead(nn.Module):
  """Multihead attention pooling (big_vision's `map` head): a learned probe attends to the
  tokens, then a residual MLP; returns one vector per image."""

  mlp_dim: int
  num_heads: int
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  gelu_approximate: bool = True
  layer_norm_epsilon: float = 1e-6

  @nn.compact
  def __call__(self, x):
    n, _, d = x.shape
    probe = self.param('probe', nn.initializers.xavier_uniform(), (1, 1, d), self.param_dtype)
    probe = jnp.tile(probe.astype(x.dtype), [n, 1, 1])
    x = nn.MultiHeadDotProductAttention(
        num_heads=self.num_heads,
        dtype=self.dtype,
        param_dtype=self.param_dtype,
        kernel_init=nn.initializers.xavier_uniform(),
    )(probe, x)
    y = nn.LayerNorm(
        epsilon=self.layer_norm_epsilon, dtype=self.dtype, param_dtype=self.param_dtype
    )(x)
    x = x + MlpBlock(
        mlp_dim=self.mlp_dim,
        dtype=self.dtype,
        param_dtype=self.param_dtype,
        dropout_rate=0.0,
        gelu_approximate=self.gelu_approximate,
    )(y, deterministic=True)
    return x[:, 0]


class VisionTransformer(nn.Module):
  """ViT / PiT / R+ViT hybrid: `VisionTransformer(num_classes=..., **model_config)`.

  `model.apply({'params': params}, images_nhwc, train=False)` returns logits (or features
  when `num_classes` is falsy). Call with `rngs={'dropout': key}` when `train=True`.
  `dtype` is the compute dtype; `param_dtype` the dtype every parameter is created in.
  `visible_tokens` [batch, k] (patch-token indices, row-major over the patch grid) runs the
  transformer on those tokens only, position embeddings taken for them, and returns the
  encoded tokens [batch, prefix + k, width] (prefix: the class token, if any) instead of
  pooled features or logits: the encoder of a masked autoencoder (vit_jax/models/mae.py).
  `token_subset` [batch, k] runs the transformer on those tokens the same way and classifies
  from them: patch dropout in training (`config.patch_dropout`, vit_jax/objectives.py).
  """

  num_classes: int
  patches: Any
  transformer: Any
  hidden_size: int
  resnet: Any | None = None
  representation_size: int | None = None
  classifier: str = 'token'
  head_bias_init: float = 0.0
  encoder: type[nn.Module] = Encoder
  model_name: str | None = None
  posemb: str = 'learn'
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  sow_attention_weights: bool = False

  def _validate(self, inputs):
    if self.classifier not in CLASSIFIERS:
      raise ValueError(f'classifier={self.classifier!r} is not one of {CLASSIFIERS}')
    if self.posemb not in posemb_lib.POSEMB_KINDS:
      raise ValueError(f'posemb={self.posemb!r} is not one of {posemb_lib.POSEMB_KINDS}')
    if inputs.ndim != 4:
      raise ValueError(f'VisionTransformer expects NHWC images, got shape {inputs.shape}')
    heads = self.transformer['num_heads'] if self.transformer is not None else 1
    if self.hidden_size % heads:
      raise ValueError(
          f'hidden_size={self.hidden_size} is not divisible by ' f'transformer.num_heads={heads}'
      )

  def _check_grid(self, x, stem_factor):
    ph, pw = self.patches['size']
    _, h, w, _ = x.shape
    if h % ph or w % pw or h < ph or w < pw:
      raise ValueError(
          f'image size {h * stem_factor}x{w * stem_factor} (feature map {h}x{w}) does not '
          f'divide by patches.size={(ph, pw)}'
          + (f' after the ResNet stem (/{stem_factor})' if stem_factor > 1 else '')
          + '; resize the images or pick a model whose patch size divides them.'
      )

  @nn.compact
  def __call__(self, inputs, *, train, visible_tokens=None, token_subset=None):
    self._validate(inputs)
    if visible_tokens is not None and token_subset is not None:
      raise ValueError(
          'pass visible_tokens (encoded tokens out) or token_subset (logits '
          'from those tokens), not both'
      )
    subset = visible_tokens if token_subset is None else token_subset
    x = inputs.astype(self.dtype)

    stem_factor = resnet_lib.stem_downsampling(self.resnet)
    if self.resnet is not None:
      x = resnet_lib.apply_resnet_stem(
          x,
          tuple(self.resnet['num_layers']),
          self.resnet['width_factor'],
          self.dtype,
          self.param_dtype,
      )

    self._check_grid(x, stem_factor)
    x = patch_embedding.PatchEmbedding(  # the original's nn.Conv, as one matmul
        features=self.hidden_size,
        patch_size=tuple(self.patches['size']),
        dtype=self.dtype,
        param_dtype=self.param_dtype,
        name='embedding',
    )(x)

    if self.transformer is not None:
      n, h, w, c = x.shape
      x = jnp.reshape(x, [n, h * w, c])
      num_prefix_tokens = 0
      if self.classifier in ('token', 'token_unpooled'):
        cls = self.param('cls', nn.initializers.zeros, (1, 1, c), self.param_dtype)
        x = jnp.concatenate([jnp.tile(cls.astype(x.dtype), [n, 1, 1]), x], axis=1)
        num_prefix_tokens = 1
      x = self.encoder(
          name='Transformer',
          posemb=self.posemb,
          dtype=self.dtype,
          param_dtype=self.param_dtype,
          sow_attention_weights=self.sow_attention_weights,
          **dict(self.transformer),
      )(
          x,
          train=train,
          grid_shape=(h, w),
          num_prefix_tokens=num_prefix_tokens,
          visible_tokens=subset,
      )
      if visible_tokens is not None:
        return x
    elif subset is not None:
      raise ValueError(
          'visible_tokens and token_subset need a transformer ' '(config.model.transformer)'
      )

    if self.classifier == 'token':
      x = x[:, 0]
    elif self.classifier == 'gap':
      x = jnp.mean(x, axis=list(range(1, x.ndim - 1)))
    elif self.classifier == 'map':
      t = self.transformer
      x = MAPHead(
          mlp_dim=t['mlp_dim'],
          num_heads=t['num_heads'],
          dtype=self.dtype,
          param_dtype=self.param_dtype,
          gelu_approximate=t.get('gelu_approximate', True),
          layer_norm_epsilon=t.get('layer_norm_epsilon', 1e-6),
      )(x)

    if self.representation_size is not None:
      x = nn.tanh(
          nn.Dense(
              self.representation_size,
              dtype=self.dtype,
              param_dtype=self.param_dtype,
              name='pre_logits',
          )(x)
      )
    else:
      x = IdentityLayer(name='pre_logits')(x)

    if self.num_classes:
      x = nn.Dense(
          self.num_classes,
          dtype=self.dtype,
          param_dtype=self.param_dtype,
          name='head',
          kernel_init=nn.initializers.zeros,
          bias_init=nn.initializers.constant(self.head_bias_init),
      )(x)
    return x
