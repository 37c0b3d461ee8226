"""Checkpoint tests against outputs of Google's original code (tests/fixtures, see README)."""

import functools
import json
import pathlib

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import param_trees  # tests/param_trees.py
import pytest
import scipy.ndimage

from vit_jax import checkpoint
from vit_jax.models import VisionTransformer

FIXTURES = pathlib.Path(__file__).parent / 'fixtures'


def _config(name):
  return json.loads((FIXTURES / f'{name}_config.json').read_text())


def _model(name, **overrides):
  cfg = _config(name)
  return VisionTransformer(num_classes=cfg['num_classes'], **dict(cfg['model_config'], **overrides))


@functools.cache
def _apply_fn(name):
  model = _model(name)

  def run(params, x):
    logits, state = model.apply(
        {'params': params},
        x,
        train=False,
        capture_intermediates=lambda mdl, _: mdl.name == 'pre_logits',
    )
    prelogits = state['intermediates']['pre_logits']['__call__'][0]
    # The representation layer is Dense('pre_logits') followed by tanh.
    return logits, jnp.tanh(prelogits) if model.representation_size else prelogits

  return jax.jit(run)


@pytest.mark.parametrize('name', ['gap', 'repr'])
@pytest.mark.parametrize('variant', ['', '_linen'])
def test_original_checkpoints_reproduce_original_outputs(name, variant):
  params = checkpoint.load(FIXTURES / f'{name}{variant}.npz')
  logits, prelogits = _apply_fn(name)(params, np.load(FIXTURES / f'{name}_inputs.npy'))
  np.testing.assert_allclose(logits, np.load(FIXTURES / f'{name}_logits.npy'), atol=1e-5, rtol=1e-5)
  np.testing.assert_allclose(
      prelogits, np.load(FIXTURES / f'{name}_prelogits.npy'), atol=2e-5, rtol=2e-5
  )


@pytest.mark.parametrize('name', ['gap', 'repr'])
def test_both_namings_give_identical_parameters(name):
  pre_linen = checkpoint.load(FIXTURES / f'{name}.npz')
  linen = checkpoint.load(FIXTURES / f'{name}_linen.npz')
  param_trees.assert_same_params(pre_linen, linen)
  # The loaded tree is exactly the model's tree (same keys and shapes).
  x = np.load(FIXTURES / f'{name}_inputs.npy')
  expected = jax.eval_shape(
      functools.partial(_model(name).init, train=False), jax.random.PRNGKey(0), x
  )['params']
  assert jax.tree.structure(expected) == jax.tree.structure(linen)
  # The attention key bias cancels in softmax, so check it loaded by value.
  raw = np.load(FIXTURES / f'{name}.npz')
  np.testing.assert_array_equal(
      linen['Transformer']['encoderblock_1']['MultiHeadDotProductAttention_0']['key']['bias'],
      raw['Transformer/encoderblock_1/MultiHeadDotProductAttention_1/key/bias'],
  )


@pytest.mark.parametrize('dtype', ['float16', 'bfloat16'])
def test_half_precision_augreg_files_upcast(tmp_path, dtype):
  raw = dict(np.load(FIXTURES / 'gap.npz'))
  np_dtype = jnp.dtype(dtype)  # ml_dtypes' bfloat16; numpy stores it as raw 2-byte void
  path = tmp_path / f'augreg_{dtype}.npz'
  np.savez(path, **{k: v.astype(np_dtype) for k, v in raw.items()})
  params = checkpoint.load(path)
  for key, value in param_trees.flat(params).items():
    assert value.dtype == np.float32, key
  expected = {
      k: np.asarray(v.astype(np_dtype), np.float32)
      for k, v in param_trees.flat(checkpoint.load(FIXTURES / 'gap.npz')).items()
  }
  for key, value in param_trees.flat(params).items():
    np.testing.assert_array_equal(value, expected[key], err_msg=key)
  logits, _ = _apply_fn('gap')(params, np.load(FIXTURES / 'gap_inputs.npy'))
  np.testing.assert_allclose(logits, np.load(FIXTURES / 'gap_logits.npy'), atol=0.05)


def test_timm_export_round_trip(tmp_path):
  params = checkpoint.load(FIXTURES / 'repr.npz')
  path = tmp_path / 'vit.safetensors'
  checkpoint.export_timm(params, path)
  from safetensors import numpy as st

  sd = st.load_file(str(path))
  width = 64
  assert sd['blocks.0.attn.qkv.weight'].shape == (3 * width, width)
  assert sd['patch_embed.proj.weight'].shape == (width, 3, 4, 4)
  assert sd['pre_logits.fc.weight'].shape == (32, width)
  # timm's fused qkv: rows [D:2D] are the key projection, as a torch Linear (out, in).
  key_kernel = params['Transformer']['encoderblock_0']['MultiHeadDotProductAttention_0']['key'][
      'kernel'
  ]
  np.testing.assert_array_equal(
      sd['blocks.0.attn.qkv.weight'][width : 2 * width], key_kernel.reshape(width, width).T
  )
  back = checkpoint.load(path, num_heads=2)
  param_trees.assert_same_params(params, back)
  logits, _ = _apply_fn('repr')(back, np.load(FIXTURES / 'repr_inputs.npy'))
  np.testing.assert_allclose(logits, np.load(FIXTURES / 'repr_logits.npy'), atol=1e-5, rtol=1e-5)


def test_npz_save_round_trip(tmp_path):
  params = checkpoint.load(FIXTURES / 'gap.npz')
  checkpoint.save(params, tmp_path / 'out.npz')
  assert (
      'Transformer/encoderblock_0/MlpBlock_0/Dense_0/kernel' in np.load(tmp_path / 'out.npz').files
  )
  param_trees.assert_same_params(params, checkpoint.load(tmp_path / 'out.npz'))


@pytest.mark.parametrize('scanned', [False, True])
def test_big_vision_layout(tmp_path, scanned):
  params = checkpoint.load(FIXTURES / 'repr.npz')
  flat = param_trees.flat(params)
  bv = {}
  for key, value in flat.items():
    if key == checkpoint.POSEMB_PATH:
      # big_vision's class token gets no position embedding: give the original a zero row.
      flat[key] = value = np.concatenate([np.zeros_like(value[:, :1]), value[:, 1:]], 1)
      bv['params/pos_embedding'] = value[:, 1:]
    elif scanned and key.startswith('Transformer/encoderblock_'):
      i, rest = key.split('/', 2)[1].split('_')[1], key.split('/', 2)[2]
      bv.setdefault(f'params/Transformer/encoderblock/{rest}', {})[int(i)] = value
    else:
      bv['params/' + key] = value
  bv = {k: np.stack([v[i] for i in sorted(v)]) if isinstance(v, dict) else v for k, v in bv.items()}
  if scanned:
    assert bv['params/Transformer/encoderblock/MlpBlock_0/Dense_0/kernel'].shape[0] == 2
  np.savez(tmp_path / 'bv.npz', **bv)
  loaded = checkpoint.load(tmp_path / 'bv.npz')
  reference = flax.traverse_util.unflatten_dict({tuple(k.split('/')): v for k, v in flat.items()})
  param_trees.assert_same_params(reference, loaded)
  x = np.load(FIXTURES / 'repr_inputs.npy')
  np.testing.assert_allclose(
      _apply_fn('repr')(loaded, x)[0], _apply_fn('repr')(reference, x)[0], atol=1e-6
  )


def _hybrid_model():
  config = dict(
      _config('gap')['model_config'],
      patches={'size': (2, 2)},
      resnet={'num_layers': (1,), 'width_factor': 0.5},
  )
  return VisionTransformer(num_classes=3, **config)


@pytest.mark.slow
def test_old_hybrid_groupnorm_shapes(tmp_path):
  model = _hybrid_model()
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 32, 32, 3))
  params = jax.jit(functools.partial(model.init, train=False))(jax.random.PRNGKey(1), x)
  params = jax.tree.map(
      lambda p: p + jax.random.normal(jax.random.PRNGKey(2), p.shape), params['params']
  )
  flat = param_trees.flat(params)
  old = {
      k: v.reshape(1, 1, 1, -1) if '/gn' in '/' + k and k.split('/')[-2].startswith('gn') else v
      for k, v in flat.items()
  }
  assert old['block1/unit1/gn3/scale'].shape == (1, 1, 1, 128)
  np.savez(tmp_path / 'hybrid.npz', **old)
  loaded = checkpoint.load(tmp_path / 'hybrid.npz')
  param_trees.assert_same_params(params, loaded)
  # Through timm's ResNetV2 names and back, too.
  checkpoint.export_timm(loaded, tmp_path / 'hybrid.safetensors')
  param_trees.assert_same_params(
      params, checkpoint.load(tmp_path / 'hybrid.safetensors', num_heads=2)
  )


@pytest.mark.parametrize('old_grid,new_grid', [((8, 8), (12, 12)), ((8, 8), (6, 10))])
def test_load_pretrained_resizes_posemb_like_scipy_zoom(tmp_path, old_grid, new_grid):
  cfg = _config('repr')
  model_config = ml_collections.ConfigDict(cfg['model_config'])
  model = VisionTransformer(num_classes=7, **cfg['model_config'])
  image = (new_grid[0] * 4, new_grid[1] * 4)
  init = jax.jit(functools.partial(model.init, train=False))(
      jax.random.PRNGKey(0), jnp.zeros((1,) + image + (3,))
  )['params']
  params = checkpoint.load_pretrained(
      pretrained_path=FIXTURES / 'repr.npz',
      init_params=init,
      model_config=model_config,
      new_grid=new_grid,
  )
  old = np.load(FIXTURES / 'repr.npz')[checkpoint.POSEMB_PATH]
  grid = old[0, 1:].reshape(*old_grid, -1)
  zoomed = scipy.ndimage.zoom(
      grid, (new_grid[0] / old_grid[0], new_grid[1] / old_grid[1], 1), order=1
  )
  pe = params['Transformer']['posembed_input']['pos_embedding']
  np.testing.assert_array_equal(pe[0, 0], old[0, 0])  # class-token row kept
  np.testing.assert_allclose(pe[0, 1:], zoomed.reshape(-1, old.shape[-1]), atol=1e-7)
  # Corners aligned: the four corner tokens are copied exactly.
  got = pe[0, 1:].reshape(*new_grid, -1)
  for (i, j), (oi, oj) in zip(
      [(0, 0), (0, -1), (-1, 0), (-1, -1)], [(0, 0), (0, -1), (-1, 0), (-1, -1)]
  ):
    np.testing.assert_allclose(got[i, j], grid[oi, oj], atol=1e-6)
  # Head comes from init (7 classes), the representation layer is kept.
  np.testing.assert_array_equal(params['head']['kernel'], init['head']['kernel'])
  assert params['pre_logits']['kernel'].shape == (64, 32)
  logits = model.apply({'params': params}, jnp.ones((1,) + image + (3,)), train=False)
  assert logits.shape == (1, 7)


def test_load_pretrained_drops_pre_logits_without_representation():
  cfg = _config('repr')
  model_config = dict(cfg['model_config'], representation_size=None)
  model = VisionTransformer(num_classes=5, **model_config)
  init = jax.eval_shape(
      functools.partial(model.init, train=False), jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3))
  )['params']
  init = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), init)
  params = checkpoint.load_pretrained(
      pretrained_path=FIXTURES / 'repr.npz',
      init_params=init,
      model_config=ml_collections.ConfigDict(model_config),
  )
  assert 'pre_logits' not in params
  assert jax.tree.structure(params) == jax.tree.structure(init)


def test_mismatch_error_names_key_shapes_and_cause():
  cfg = _config('gap')
  wider = dict(cfg['model_config'], hidden_size=96)
  model = VisionTransformer(num_classes=5, **wider)
  init = jax.eval_shape(
      functools.partial(model.init, train=False), jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3))
  )['params']
  init = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), init)
  with pytest.raises(
      ValueError,
      match=r'parameter .*: the model expects shape .*the ' r'checkpoint has .*model name',
  ):
    checkpoint.load_pretrained(
        pretrained_path=FIXTURES / 'gap.npz',
        init_params=init,
        model_config=ml_collections.ConfigDict(wider),
    )


def test_pickles_and_missing_files_are_clear_errors(tmp_path):
  with pytest.raises(FileNotFoundError, match='does not exist'):
    checkpoint.load(tmp_path / 'nope.npz')
  (tmp_path / 'model.pth').write_bytes(b'not really a pickle')
  try:
    import torch  # noqa: F401 (only whether it is installed)
  except ImportError:
    with pytest.raises(ValueError, match='safetensors'):
      checkpoint.load(tmp_path / 'model.pth')
  pickled = tmp_path / 'pickled.npz'
  np.savez(pickled, obj=np.array([{'a': 1}], dtype=object))
  with pytest.raises(ValueError):
    checkpoint.load(pickled)
