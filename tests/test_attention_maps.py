"""Attention maps and rollout against independent numpy computations."""

import jax
import numpy as np
import pytest

from vit_jax.models import attention_maps
from vit_jax.models import VisionTransformer


def _model(patch, classifier='token', layers=2):
  transformer = dict(
      mlp_dim=16, num_heads=2, num_layers=layers, dropout_rate=0.0, attention_dropout_rate=0.0
  )
  return VisionTransformer(
      num_classes=3,
      patches={'size': (patch, patch)},
      hidden_size=8,
      transformer=transformer,
      classifier=classifier,
  )


def _params(model, images, seed=0):
  """Initial parameters plus 0.5 N(0, 1) noise: init compiled as one program, the noise from
  numpy (eager jax ops would compile a program per operation and leaf shape)."""
  init = jax.jit(lambda key, x: model.init(key, x, train=False)['params'])
  params = init(jax.random.PRNGKey(seed), images)
  rng = np.random.default_rng(seed + 1)
  return jax.tree.map(
      lambda p: np.asarray(p) + 0.5 * rng.standard_normal(p.shape, np.float32), params
  )


def _layer_norm(x, p):
  mean, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
  return (x - mean) / np.sqrt(var + 1e-6) * p['scale'] + p['bias']


def test_first_layer_map_equals_numpy_softmax():
  images = jax.random.normal(jax.random.PRNGKey(5), (2, 8, 8, 3))
  model = _model(4)
  params = _params(model, images)
  maps = attention_maps.attention_maps(model, params, images)
  assert len(maps) == 2 and maps[0].shape == (2, 2, 5, 5)
  np.testing.assert_allclose(maps[0].sum(-1), 1.0, atol=1e-5)
  # Independent recomputation of layer 0: patch embed, cls, posemb, LayerNorm, q k softmax.
  p = jax.tree.map(np.asarray, params)
  x = np.asarray(images).reshape(2, 2, 4, 2, 4, 3).transpose(0, 1, 3, 2, 4, 5).reshape(2, 4, 48)
  tokens = x @ p['embedding']['kernel'].reshape(48, 8) + p['embedding']['bias']
  tokens = np.concatenate([np.broadcast_to(p['cls'], (2, 1, 8)), tokens], 1)
  tokens = tokens + p['Transformer']['posembed_input']['pos_embedding']
  block = p['Transformer']['encoderblock_0']
  y = _layer_norm(tokens, block['LayerNorm_0'])
  attn = block['MultiHeadDotProductAttention_0']
  q = np.einsum('bld,dhk->bhlk', y, attn['query']['kernel']) + attn['query']['bias'][:, None]
  k = np.einsum('bld,dhk->bhlk', y, attn['key']['kernel']) + attn['key']['bias'][:, None]
  logits = q @ k.transpose(0, 1, 3, 2) / np.sqrt(4)
  expected = np.exp(logits - logits.max(-1, keepdims=True))
  expected /= expected.sum(-1, keepdims=True)
  np.testing.assert_allclose(maps[0], expected, atol=1e-4)


def test_rollout_by_hand_and_uniform_attention():
  rng = np.random.default_rng(0)
  maps = [rng.random((1, 2, 5, 5)) for _ in range(2)]
  maps = [m / m.sum(-1, keepdims=True) for m in maps]
  mixed = [0.5 * m.mean(1)[0] + 0.5 * np.eye(5) for m in maps]
  mixed = [m / m.sum(-1, keepdims=True) for m in mixed]
  joint = mixed[1] @ mixed[0]
  expected = joint[0, 1:] / joint[0, 1:].sum()
  np.testing.assert_allclose(attention_maps.rollout(maps, 1)[0], expected, atol=1e-12)
  uniform = [np.full((1, 2, 5, 5), 0.2)] * 3
  np.testing.assert_allclose(attention_maps.rollout(uniform, 1)[0], 0.25, atol=1e-12)
  np.testing.assert_allclose(attention_maps.rollout(uniform, 0)[0], 0.2, atol=1e-12)


@pytest.mark.slow
def test_pit_heatmap_has_one_weight_per_pixel_and_patch_models_upsample():
  images = jax.random.normal(jax.random.PRNGKey(0), (1, 6, 6, 1))
  pit = _model(1, classifier='gap')
  heat = attention_maps.rollout_heatmaps(pit, _params(pit, images), images)
  assert heat.shape == (1, 6, 6) and len(np.unique(np.round(heat, 6))) > 6
  assert heat.min() == 0.0 and heat.max() == 1.0
  images = jax.random.normal(jax.random.PRNGKey(0), (1, 8, 8, 3))
  vit = _model(4)
  params = _params(vit, images)
  heat = attention_maps.rollout_heatmaps(vit, params, images)
  assert heat.shape == (1, 8, 8)
  np.testing.assert_array_equal(heat[0, :4, :4], heat[0, 0, 0])  # one value per patch
  heads = attention_maps.head_maps(attention_maps.attention_maps(vit, params, images), 1, 1, (2, 2))
  assert heads.shape == (2, 2, 2)


def test_scanned_model_gives_the_unscanned_maps():
  """A scanned encoder sows its weights stacked; the per-layer list is the same."""
  from vit_jax.models import layer_stack

  images = jax.random.normal(jax.random.PRNGKey(5), (2, 8, 8, 3))
  model = _model(4, layers=3)
  params = _params(model, images)
  scanned = model.clone(transformer=dict(model.transformer, scan_layers=True))
  maps = attention_maps.attention_maps(model, params, images)
  scanned_maps = attention_maps.attention_maps(scanned, layer_stack.stack(params), images)
  assert len(scanned_maps) == 3
  for a, b in zip(maps, scanned_maps):
    np.testing.assert_allclose(a, b, atol=1e-6)
