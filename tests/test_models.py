"""Model tests: golden parameter counts, original numerics, dtype, dropout, posemb, hybrids."""

import functools
import json
import pathlib

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vit_jax.configs import models as model_configs
from vit_jax.models import resnet
from vit_jax.models import VisionTransformer

FIXTURES = pathlib.Path(__file__).parent / 'fixtures'
if not (FIXTURES / 'gap_linen.npz').exists():
  FIXTURES = pathlib.Path(__file__).parents[2] / 'shared' / 'fixtures'

# Parameter counts at 224x224 with 1000 classes, from the original code's models_test.py.
ORIGINAL_SIZES = {
    'R+ViT-Ti_16': 6_337_704,
    'R26+ViT-B_32': 101_383_976,
    'R26+ViT-S_32': 36_431_912,
    'R50+ViT-B_16': 98_659_112,
    'R50+ViT-L_32': 328_994_856,
    'ViT-B_8': 86_576_872,
    'ViT-B_16': 86_567_656,
    'ViT-B_16-gap-norep': 86_566_120,
    'ViT-B_32': 88_224_232,
    'ViT-B_32-gap-norep': 88_222_696,
    'ViT-H_14': 632_045_800,
    'ViT-L_16': 304_326_632,
    'ViT-L_32': 306_535_400,
    'ViT-S_16': 22_050_664,
    'ViT-S_16-gap-norep': 22_049_896,
    'ViT-S_32': 22_878_952,
    'ViT-S_32-gap-norep': 22_878_184,
    'ViT-Ti_16': 5_717_416,
    'testing': 21_390,
    'testing-unpooled': 21_370,
}
PIT_NAMES = ('PiT-T', 'PiT-S', 'PiT-B', 'PiT-L')


def _abstract_params(model, size, channels=3):
  images = jax.ShapeDtypeStruct((1, size, size, channels), jnp.float32)
  return jax.eval_shape(lambda x: model.init(jax.random.PRNGKey(0), x, train=False), images)[
      'params'
  ]


def _count(tree):
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


def _plain_vit_count(width, depth, mlp, patch, tokens, num_classes, channels=3):
  """Closed-form parameter count of a plain ViT with a class token."""
  block = (
      2 * 2 * width  # two LayerNorms
      + 4 * (width * width + width)  # q, k, v, out
      + (width * mlp + mlp)
      + (mlp * width + width)
  )
  return (
      patch * patch * channels * width
      + width  # embedding
      + width  # cls
      + (tokens + 1) * width  # position embedding
      + depth * block
      + 2 * width  # blocks + encoder_norm
      + width * num_classes
      + num_classes
  )


def test_every_registered_model_has_a_golden_count():
  # DiTs (model_configs.DIT_NAMES) have their golden counts in test_dit.py.
  vits = set(model_configs.MODEL_CONFIGS) - set(model_configs.DIT_NAMES)
  assert vits == set(ORIGINAL_SIZES) | set(PIT_NAMES)


@pytest.mark.parametrize('name,size', sorted(ORIGINAL_SIZES.items()))
def test_parameter_count_matches_original(name, size):
  model = VisionTransformer(num_classes=1000, **model_configs.MODEL_CONFIGS[name])
  assert _count(_abstract_params(model, 224)) == size


@pytest.mark.parametrize('name,size', sorted(ORIGINAL_SIZES.items()))
def test_scanned_parameter_count_matches_original(name, size):
  """Every registered config takes scan_layers (and remat); the same parameters, stacked."""
  config = model_configs.MODEL_CONFIGS[name].to_dict()
  config['transformer'].update(scan_layers=True, remat='dots')
  params = _abstract_params(VisionTransformer(num_classes=1000, **config), 224)
  assert _count(params) == size
  depth = config['transformer']['num_layers']
  assert params['Transformer']['encoderblock']['LayerNorm_0']['scale'].shape[0] == depth


@pytest.mark.parametrize('name', PIT_NAMES)
def test_pit_parameter_count_closed_form(name):
  config = model_configs.MODEL_CONFIGS[name]
  assert tuple(config.patches.size) == (1, 1)
  model = VisionTransformer(num_classes=100, **config)
  expected = _plain_vit_count(
      config.hidden_size, config.transformer.num_layers, config.transformer.mlp_dim, 1, 32 * 32, 100
  )
  assert _count(_abstract_params(model, 32)) == expected


def test_unpooled_outputs_every_token():
  model = VisionTransformer(num_classes=7, **model_configs.MODEL_CONFIGS['testing-unpooled'])
  x = jnp.ones((2, 64, 48, 3))
  out = jax.eval_shape(
      lambda: model.apply(model.init(jax.random.PRNGKey(0), x, train=False), x, train=False)
  )
  assert out.shape == (2, 12, 7)


def _fixture_model_and_params(name, **overrides):
  config = json.loads((FIXTURES / f'{name}_config.json').read_text())
  model_config = dict(config['model_config'], **overrides)
  model = VisionTransformer(num_classes=config['num_classes'], **model_config)
  flat = np.load(FIXTURES / f'{name}_linen.npz', allow_pickle=False)
  params = flax.traverse_util.unflatten_dict({tuple(k.split('/')): v for k, v in flat.items()})
  return model, params, np.load(FIXTURES / f'{name}_inputs.npy')


@pytest.mark.parametrize('name', ['gap', 'repr'])
@pytest.mark.slow
def test_matches_original_logits(name):
  model, params, x = _fixture_model_and_params(name)
  logits = model.apply({'params': params}, x, train=False)
  np.testing.assert_allclose(logits, np.load(FIXTURES / f'{name}_logits.npy'), atol=1e-5, rtol=1e-5)


def test_exact_gelu_is_a_different_model():
  """gelu_approximate=False (timm) moves the original's logits by more than 1e-5."""
  config = json.loads((FIXTURES / 'gap_config.json').read_text())
  transformer = dict(config['model_config']['transformer'], gelu_approximate=False)
  model, params, x = _fixture_model_and_params('gap', transformer=transformer)
  logits = model.apply({'params': params}, x, train=False)
  diff = np.abs(logits - np.load(FIXTURES / 'gap_logits.npy')).max()
  assert 1e-5 < diff < 1e-2


def test_exact_gelu_mlp_against_numpy():
  from scipy import special

  from vit_jax.models import MlpBlock

  x = np.random.default_rng(0).normal(size=(2, 5, 8)).astype(np.float32)
  block = MlpBlock(mlp_dim=16, dropout_rate=0.0, gelu_approximate=False)
  params = block.init(jax.random.PRNGKey(1), x, deterministic=True)['params']
  h = x @ params['Dense_0']['kernel'] + params['Dense_0']['bias']
  h = 0.5 * h * (1 + special.erf(h / np.sqrt(2)))
  expected = h @ params['Dense_1']['kernel'] + params['Dense_1']['bias']
  np.testing.assert_allclose(
      block.apply({'params': params}, x, deterministic=True), expected, atol=1e-5, rtol=1e-5
  )


@pytest.mark.slow
def test_bfloat16_compute_keeps_float32_params():
  model32, params, x = _fixture_model_and_params('gap')
  model16, _, _ = _fixture_model_and_params('gap', dtype=jnp.bfloat16)
  init16 = jax.eval_shape(functools.partial(model16.init, train=False), jax.random.PRNGKey(0), x)[
      'params'
  ]
  assert {p.dtype for p in jax.tree.leaves(init16)} == {jnp.dtype(jnp.float32)}
  logits16, state = model16.apply({'params': params}, x, train=False, capture_intermediates=True)
  assert logits16.dtype == jnp.bfloat16
  # Every layer's output is computed in bfloat16 (the original never passed dtype down).
  dense_like = [
      v
      for path, v in flax.traverse_util.flatten_dict(state['intermediates']).items()
      if len(path) > 1
      and path[-2]
      in (
          'query',
          'key',
          'value',
          'out',
          'Dense_0',
          'Dense_1',
          'embedding',
          'LayerNorm_0',
          'encoder_norm',
          'head',
      )
  ]
  assert dense_like and all(v[0].dtype == jnp.bfloat16 for v in dense_like)
  logits32 = model32.apply({'params': params}, x, train=False)
  np.testing.assert_allclose(np.asarray(logits16, np.float32), logits32, atol=5e-2, rtol=5e-2)


@pytest.mark.parametrize(
    'name,overrides',
    [
        ('testing', {'representation_size': 8}),
        ('testing', {'classifier': 'map'}),
        ('R+ViT-Ti_16', {'hidden_size': 12, 'resnet': {'num_layers': (1,), 'width_factor': 0.5}}),
        ('PiT-T', {'hidden_size': 12}),
    ],
)
@pytest.mark.parametrize('scan_layers', [False, True])
@pytest.mark.slow
def test_param_dtype_reaches_every_parameter(name, overrides, scan_layers):
  config = dict(model_configs.MODEL_CONFIGS[name].to_dict(), **overrides)
  config['transformer'] = dict(config['transformer'], scan_layers=scan_layers)
  model = VisionTransformer(num_classes=3, param_dtype=jnp.bfloat16, **config)
  x = jnp.zeros((1, 32, 32, 3))
  params = jax.eval_shape(functools.partial(model.init, train=False), jax.random.PRNGKey(0), x)[
      'params'
  ]
  dtypes = {'/'.join(k): v.dtype for k, v in flax.traverse_util.flatten_dict(params).items()}
  assert {k for k, d in dtypes.items() if d != jnp.bfloat16} == set()
  assert len(dtypes) > 10
  float32 = VisionTransformer(num_classes=3, **config)
  assert _count(params) == _count(_abstract_params(float32, 32))
  logits = jax.eval_shape(lambda p: model.apply({'params': p}, x, train=False), params)
  assert logits.dtype == jnp.float32  # compute dtype stays float32


@pytest.mark.slow
def test_dropout_needs_rng_and_varies_only_in_training():
  config = dict(model_configs.MODEL_CONFIGS['testing'])
  config['transformer'] = dict(config['transformer'], attention_dropout_rate=0.2)
  model = VisionTransformer(num_classes=3, **config)
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 32, 32, 3))
  params = jax.jit(functools.partial(model.init, train=False))(jax.random.PRNGKey(1), x)
  params = params['params']
  apply = jax.jit(model.apply, static_argnames='train')
  leaves, treedef = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.PRNGKey(2), len(leaves))
  params = jax.tree.unflatten(
      treedef,
      [  # non-zero head so that dropout shows
          p + 0.3 * jax.random.normal(k, p.shape) for p, k in zip(leaves, keys)
      ],
  )
  eval_a = apply({'params': params}, x, train=False)
  eval_b = apply({'params': params}, x, train=False)
  np.testing.assert_array_equal(eval_a, eval_b)
  train = lambda seed: apply(
      {'params': params}, x, train=True, rngs={'dropout': jax.random.PRNGKey(seed)}
  )
  np.testing.assert_array_equal(train(3), train(3))
  assert np.abs(train(3) - train(4)).max() > 1e-4
  assert np.abs(train(3) - eval_a).max() > 1e-4
  with pytest.raises(Exception, match='dropout'):
    model.apply({'params': params}, x, train=True)


def test_learned_posemb_init_and_zero_head():
  model = VisionTransformer(
      num_classes=5, **dict(model_configs.MODEL_CONFIGS['testing'], hidden_size=64)
  )
  init = jax.jit(functools.partial(model.init, train=False))
  params = init(jax.random.PRNGKey(0), jnp.zeros((1, 128, 128, 3)))['params']
  pe = params['Transformer']['posembed_input']['pos_embedding']
  assert pe.shape == (1, 65, 64)  # class token row + 8x8 grid
  assert abs(float(pe.std()) - 0.02) < 0.002
  assert not np.any(params['head']['kernel']) and not np.any(params['cls'])


def test_sincos2d_and_none_posemb():
  base = dict(model_configs.MODEL_CONFIGS['testing'], hidden_size=8)
  x = jax.random.normal(jax.random.PRNGKey(0), (1, 32, 48, 3))
  for kind in ('sincos2d', 'none'):
    model = VisionTransformer(num_classes=3, posemb=kind, **base)
    variables = jax.eval_shape(functools.partial(model.init, train=False), jax.random.PRNGKey(0), x)
    assert 'posembed_input' not in variables['params']['Transformer']
  # sincos2d values: [sin(x w), cos(x w), sin(y w), cos(y w)] with w = 1e4^(-k/(D/4-1)).
  from vit_jax.models import posemb

  pe = posemb.sincos2d((2, 3), 8)[0]
  w = np.array([1.0, 1e-4])
  row, col = 1, 2  # token index row * 3 + col
  np.testing.assert_allclose(
      pe[row * 3 + col],
      np.concatenate([np.sin(col * w), np.cos(col * w), np.sin(row * w), np.cos(row * w)]),
      atol=1e-6,
  )
  with pytest.raises(ValueError, match='divisible by 4'):
    posemb.sincos2d((2, 2), 6)


def test_pit_has_one_token_per_pixel():
  model = VisionTransformer(num_classes=4, **model_configs.MODEL_CONFIGS['PiT-T'])
  x = jnp.zeros((1, 7, 5, 3))
  variables = jax.eval_shape(functools.partial(model.init, train=False), jax.random.PRNGKey(0), x)
  assert variables['params']['Transformer']['posembed_input']['pos_embedding'].shape == (
      1,
      7 * 5 + 1,
      192,
  )


def test_image_not_divisible_by_patch_is_a_clear_error():
  model = VisionTransformer(num_classes=4, **model_configs.MODEL_CONFIGS['ViT-Ti_16'])
  with pytest.raises(ValueError, match=r'patches.size=\(16, 16\)'):
    model.init(jax.random.PRNGKey(0), jnp.zeros((1, 40, 32, 3)), train=False)


def test_stdconv_standardises_kernel_like_numpy():
  conv = resnet.StdConv(features=4, kernel_size=(3, 3), use_bias=False)
  x = jax.random.normal(jax.random.PRNGKey(0), (1, 6, 6, 2))
  params = conv.init(jax.random.PRNGKey(1), x)['params']
  w = np.asarray(params['kernel'], np.float64)
  w_std = (w - w.mean(axis=(0, 1, 2))) / (w.std(axis=(0, 1, 2)) + 1e-5)
  expected = jax.lax.conv_general_dilated(
      x, jnp.asarray(w_std, jnp.float32), (1, 1), 'SAME', dimension_numbers=('NHWC', 'HWIO', 'NHWC')
  )
  np.testing.assert_allclose(conv.apply({'params': params}, x), expected, atol=1e-5)


def test_hybrid_stem_shapes_and_names():
  config = dict(model_configs.MODEL_CONFIGS['R+ViT-Ti_16'])
  model = VisionTransformer(num_classes=2, **config)
  variables = jax.eval_shape(
      lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1, 96, 96, 3)), train=False)
  )
  params = variables['params']
  assert params['conv_root']['kernel'].shape == (7, 7, 3, 64)
  assert params['gn_root']['scale'].shape == (64,)
  # Root: 96 -> 48 (conv, stride 2) -> 24 (max-pool); 8x8 patches -> 3x3 grid + cls.
  assert params['Transformer']['posembed_input']['pos_embedding'].shape == (1, 10, 192)
  r50 = VisionTransformer(num_classes=2, **model_configs.MODEL_CONFIGS['R50+ViT-B_16'])
  r50_params = jax.eval_shape(
      lambda: r50.init(jax.random.PRNGKey(0), jnp.zeros((1, 224, 224, 3)), train=False)
  )
  r50_params = r50_params['params']
  assert set(r50_params['block1']['unit1']) == {
      'conv_proj',
      'gn_proj',
      'conv1',
      'gn1',
      'conv2',
      'gn2',
      'conv3',
      'gn3',
  }
  assert r50_params['Transformer']['posembed_input']['pos_embedding'].shape == (1, 197, 768)
