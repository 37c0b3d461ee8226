"""big_vision ViTs with the `map` head (SigLIP image towers): a big_vision-layout npz built with
numpy loads, and its logits equal a numpy forward pass written from big_vision's semantics."""

import math

import numpy as np
import pytest

from vit_jax import checkpoint
from vit_jax.models import VisionTransformer

WIDTH, HEADS, MLP, DEPTH, PATCH, IMAGE, CLASSES = 32, 4, 48, 2, 4, 8, 3


def _dense(rng, din, dout, name, out):
  out[f'{name}/kernel'] = rng.normal(0, 0.2, (din, dout)).astype(np.float32)
  out[f'{name}/bias'] = rng.normal(0, 0.2, (dout,)).astype(np.float32)


def _attention(rng, name, out):
  hd = WIDTH // HEADS
  for proj in ('query', 'key', 'value'):
    out[f'{name}/{proj}/kernel'] = rng.normal(0, 0.2, (WIDTH, HEADS, hd)).astype(np.float32)
    out[f'{name}/{proj}/bias'] = rng.normal(0, 0.2, (HEADS, hd)).astype(np.float32)
  out[f'{name}/out/kernel'] = rng.normal(0, 0.2, (HEADS, hd, WIDTH)).astype(np.float32)
  out[f'{name}/out/bias'] = rng.normal(0, 0.2, (WIDTH,)).astype(np.float32)


def _norm(rng, name, out):
  out[f'{name}/scale'] = (1 + rng.normal(0, 0.2, (WIDTH,))).astype(np.float32)
  out[f'{name}/bias'] = rng.normal(0, 0.2, (WIDTH,)).astype(np.float32)


def _big_vision_params(scanned):
  """A big_vision `map`-head ViT in its own layout: params/ prefix, top-level pos_embedding."""
  rng = np.random.default_rng(0)
  p = {
      'embedding/kernel': rng.normal(0, 0.2, (PATCH, PATCH, 3, WIDTH)).astype(np.float32),
      'embedding/bias': rng.normal(0, 0.2, (WIDTH,)).astype(np.float32),
      'pos_embedding': rng.normal(0, 0.2, (1, (IMAGE // PATCH) ** 2, WIDTH)).astype(np.float32),
      'MAPHead_0/probe': rng.normal(0, 0.2, (1, 1, WIDTH)).astype(np.float32),
  }
  for i in range(DEPTH):
    block = f'Transformer/encoderblock_{i}'
    _norm(rng, f'{block}/LayerNorm_0', p)
    _attention(rng, f'{block}/MultiHeadDotProductAttention_0', p)
    _norm(rng, f'{block}/LayerNorm_1', p)
    _dense(rng, WIDTH, MLP, f'{block}/MlpBlock_0/Dense_0', p)
    _dense(rng, MLP, WIDTH, f'{block}/MlpBlock_0/Dense_1', p)
  _norm(rng, 'Transformer/encoder_norm', p)
  _attention(rng, 'MAPHead_0/MultiHeadDotProductAttention_0', p)
  _norm(rng, 'MAPHead_0/LayerNorm_0', p)
  _dense(rng, WIDTH, MLP, 'MAPHead_0/MlpBlock_0/Dense_0', p)
  _dense(rng, MLP, WIDTH, 'MAPHead_0/MlpBlock_0/Dense_1', p)
  _dense(rng, WIDTH, CLASSES, 'head', p)
  if scanned:  # nn.scan over blocks stores one leading depth axis under `encoderblock`
    blocks = [k for k in p if k.startswith('Transformer/encoderblock_0/')]
    for key in blocks:
      rest = key.split('/', 2)[2]
      p[f'Transformer/encoderblock/{rest}'] = np.stack(
          [p.pop(f'Transformer/encoderblock_{i}/{rest}') for i in range(DEPTH)]
      )
  return {'params/' + k: v for k, v in p.items()}


def _layer_norm(x, p, name):
  mean = x.mean(-1, keepdims=True)
  var = ((x - mean) ** 2).mean(-1, keepdims=True)
  return (x - mean) / np.sqrt(var + 1e-6) * p[f'{name}/scale'] + p[f'{name}/bias']


def _gelu_tanh(x):
  return 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)))


def _mha(q_in, kv_in, p, name):
  q = np.einsum('bld,dhk->blhk', q_in, p[f'{name}/query/kernel']) + p[f'{name}/query/bias']
  k = np.einsum('bld,dhk->blhk', kv_in, p[f'{name}/key/kernel']) + p[f'{name}/key/bias']
  v = np.einsum('bld,dhk->blhk', kv_in, p[f'{name}/value/kernel']) + p[f'{name}/value/bias']
  logits = np.einsum('bqhk,bthk->bhqt', q, k) / math.sqrt(q.shape[-1])
  weights = np.exp(logits - logits.max(-1, keepdims=True))
  weights /= weights.sum(-1, keepdims=True)
  context = np.einsum('bhqt,bthk->bqhk', weights, v)
  return np.einsum('bqhk,hkd->bqd', context, p[f'{name}/out/kernel']) + p[f'{name}/out/bias']


def _mlp(x, p, name):
  h = _gelu_tanh(x @ p[f'{name}/Dense_0/kernel'] + p[f'{name}/Dense_0/bias'])
  return h @ p[f'{name}/Dense_1/kernel'] + p[f'{name}/Dense_1/bias']


def _reference_logits(p, images):
  """big_vision's ViT with pool_type='map', in float64 numpy."""
  p = {k.removeprefix('params/'): v.astype(np.float64) for k, v in p.items()}
  if 'Transformer/encoderblock/LayerNorm_0/scale' in p:
    for key in [k for k in p if k.startswith('Transformer/encoderblock/')]:
      rest = key.split('/', 2)[2]
      for i, value in enumerate(p.pop(key)):
        p[f'Transformer/encoderblock_{i}/{rest}'] = value
  n, g = images.shape[0], IMAGE // PATCH
  patches = images.reshape(n, g, PATCH, g, PATCH, 3).transpose(0, 1, 3, 2, 4, 5)
  x = patches.reshape(n, g * g, -1) @ p['embedding/kernel'].reshape(-1, WIDTH)
  x = x + p['embedding/bias'] + p['pos_embedding']
  for i in range(DEPTH):
    b = f'Transformer/encoderblock_{i}'
    y = _layer_norm(x, p, f'{b}/LayerNorm_0')
    x = x + _mha(y, y, p, f'{b}/MultiHeadDotProductAttention_0')
    x = x + _mlp(_layer_norm(x, p, f'{b}/LayerNorm_1'), p, f'{b}/MlpBlock_0')
  x = _layer_norm(x, p, 'Transformer/encoder_norm')
  probe = np.broadcast_to(p['MAPHead_0/probe'], (n, 1, WIDTH))
  x = _mha(probe, x, p, 'MAPHead_0/MultiHeadDotProductAttention_0')
  x = x + _mlp(_layer_norm(x, p, 'MAPHead_0/LayerNorm_0'), p, 'MAPHead_0/MlpBlock_0')
  return x[:, 0] @ p['head/kernel'] + p['head/bias']


@pytest.mark.parametrize('scanned,two_towers', [(False, False), (True, True)])
def test_big_vision_map_head_checkpoint_gives_reference_logits(tmp_path, scanned, two_towers):
  raw = _big_vision_params(scanned)
  stored = raw
  if two_towers:  # SigLIP: image tower under img/, a text tower and the loss's t and b beside
    stored = {k.replace('params/', 'params/img/'): v for k, v in raw.items()}
    stored.update(
        {
            'params/txt/Embed_0/embedding': np.zeros((7, WIDTH), np.float32),
            'params/t': np.ones(1, np.float32),
            'params/b': np.zeros(1, np.float32),
        }
    )
  np.savez(tmp_path / 'siglip_like.npz', **stored)
  params = checkpoint.load(tmp_path / 'siglip_like.npz')
  assert set(params['MAPHead_0']) == {
      'probe',
      'MultiHeadDotProductAttention_0',
      'LayerNorm_0',
      'MlpBlock_0',
  }
  model = VisionTransformer(
      num_classes=CLASSES,
      patches={'size': (PATCH, PATCH)},
      hidden_size=WIDTH,
      classifier='map',
      transformer={
          'num_layers': DEPTH,
          'num_heads': HEADS,
          'mlp_dim': MLP,
          'dropout_rate': 0.0,
          'attention_dropout_rate': 0.0,
      },
  )
  images = np.random.default_rng(1).uniform(-1, 1, (2, IMAGE, IMAGE, 3)).astype(np.float32)
  logits = np.asarray(model.apply({'params': params}, images, train=False))
  np.testing.assert_allclose(
      logits, _reference_logits(raw, images.astype(np.float64)), rtol=1e-4, atol=1e-4
  )
