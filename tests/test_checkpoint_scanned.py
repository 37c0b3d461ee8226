"""Checkpoints and scanned models: every format loads stacked; writers write encoderblock_N."""

import functools
import json
import pathlib

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import param_trees  # tests/param_trees.py
import pytest
from safetensors import numpy as st

from vit_jax import checkpoint
from vit_jax import errors
from vit_jax.checkpoints import architecture
from vit_jax.models import layer_stack
from vit_jax.models import VisionTransformer

FIXTURES = pathlib.Path(__file__).parent / 'fixtures'
X = np.load(FIXTURES / 'gap_inputs.npy')


def _model_config(name, scan_layers=False, **overrides):
  config = json.loads((FIXTURES / f'{name}_config.json').read_text())['model_config']
  transformer = dict(config['transformer'], scan_layers=scan_layers)
  return dict(config, transformer=transformer, **overrides)


def _init(model_config, num_classes=5, image=32):
  model = VisionTransformer(num_classes=num_classes, **model_config)
  init = jax.eval_shape(
      functools.partial(model.init, train=False),
      jax.random.PRNGKey(0),
      jnp.zeros((1, image, image, 3)),
  )['params']
  return model, jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), init)


def _big_vision_scanned(params, path):
  """big_vision's own layout of a gap model: `params/` prefix, blocks scanned, no cls row."""
  stacked = layer_stack.stack(params)
  flat = {'params/' + k: v for k, v in param_trees.flat(stacked).items()}
  flat['params/pos_embedding'] = flat.pop('params/' + checkpoint.POSEMB_PATH)
  np.savez(path, **flat)
  return path


@pytest.fixture(scope='module')
def gap_files(tmp_path_factory):
  """The gap fixture in every format that has a plain-ViT gap model: (format, path, kwargs)."""
  tmp = tmp_path_factory.mktemp('formats')
  params = checkpoint.load(FIXTURES / 'gap.npz')
  checkpoint.export_timm(params, tmp / 'timm.safetensors')
  return [
      ('original', FIXTURES / 'gap.npz', {}),
      ('linen', FIXTURES / 'gap_linen.npz', {}),
      ('big_vision', _big_vision_scanned(params, tmp / 'bv.npz'), {}),
      ('timm', tmp / 'timm.safetensors', {'num_heads': 2}),
  ]


def test_every_npz_and_timm_format_loads_into_a_scanned_model(gap_files):
  scanned_config = _model_config('gap', scan_layers=True)
  model, init = _init(scanned_config)
  golden = np.load(FIXTURES / 'gap_logits.npy')
  reference = checkpoint.load(FIXTURES / 'gap.npz')
  for fmt, path, kwargs in gap_files:
    loaded = checkpoint.load(path, scan_layers=True, **kwargs)
    assert layer_stack.is_stacked(loaded), fmt
    param_trees.assert_same_params(loaded, layer_stack.stack(reference))
    pretrained = checkpoint.load_pretrained(
        pretrained_path=path,
        init_params=init,
        model_config=ml_collections.ConfigDict(scanned_config),
    )
    assert jax.tree.structure(pretrained) == jax.tree.structure(init), fmt
    head = {'head/kernel', 'head/bias'}  # reset to init by load_pretrained
    want = {
        k: v for k, v in param_trees.flat(layer_stack.stack(reference)).items() if k not in head
    }
    got = param_trees.flat(pretrained)
    for key, value in want.items():
      np.testing.assert_array_equal(got[key], value, err_msg=f'{fmt}: {key}')
    logits = model.apply({'params': loaded}, X, train=False)
    np.testing.assert_allclose(logits, golden, atol=1e-5, rtol=1e-5, err_msg=fmt)


def _without_pre_logits(params):
  """ViTForImageClassification has no representation layer: the head reads the class token."""
  del params['pre_logits']
  rng = np.random.default_rng(0)
  params['head'] = {
      'kernel': rng.normal(size=(64, 5)).astype(np.float32),
      'bias': rng.normal(size=(5,)).astype(np.float32),
  }
  return params


def test_hugging_face_folder_loads_into_a_scanned_model(tmp_path):
  params = _without_pre_logits(checkpoint.load(FIXTURES / 'repr.npz'))
  unscanned = _model_config('repr', representation_size=None)
  checkpoint.export_hf(params, unscanned, tmp_path / 'hf')
  scanned = _model_config('repr', scan_layers=True, representation_size=None)
  model, init = _init(scanned)
  pretrained = checkpoint.load_pretrained(
      pretrained_path=tmp_path / 'hf',
      init_params=init,
      model_config=ml_collections.ConfigDict(scanned),
  )
  loaded = checkpoint.load(tmp_path / 'hf', scan_layers=True)
  param_trees.assert_same_params(loaded, layer_stack.stack(checkpoint.load(tmp_path / 'hf')))
  np.testing.assert_array_equal(
      pretrained['Transformer']['encoderblock']['MlpBlock_0']['Dense_1']['kernel'][1],
      params['Transformer']['encoderblock_1']['MlpBlock_0']['Dense_1']['kernel'],
  )
  plain = VisionTransformer(num_classes=5, **unscanned)
  np.testing.assert_allclose(
      model.apply({'params': loaded}, X, train=False),
      plain.apply({'params': params}, X, train=False),
      atol=1e-5,
      rtol=1e-5,
  )


def test_scanned_load_pretrained_resizes_posemb_and_checks_in_the_file_layout():
  config = _model_config('repr')
  scanned = _model_config('repr', scan_layers=True)
  _, init = _init(config, num_classes=7, image=48)
  _, scanned_init = _init(scanned, num_classes=7, image=48)
  load = lambda cfg, init: checkpoint.load_pretrained(
      pretrained_path=FIXTURES / 'repr.npz',
      init_params=init,
      model_config=ml_collections.ConfigDict(cfg),
  )
  param_trees.assert_same_params(load(scanned, scanned_init), layer_stack.stack(load(config, init)))
  deeper = _model_config('repr', scan_layers=True)
  deeper['transformer']['num_layers'] = 3
  _, deeper_init = _init(deeper)
  with pytest.raises(
      errors.UserInputError,
      match=r'16 model parameters are not in the file ' r"\(e\.g\. \['Transformer/encoderblock_2/",
  ):
    load(deeper, deeper_init)


def test_writers_take_scanned_params_and_write_the_file_layout(tmp_path):
  params = checkpoint.load(FIXTURES / 'repr.npz')
  stacked = layer_stack.stack(params)
  for name, tree in (('plain', params), ('stacked', stacked)):
    checkpoint.save(tree, tmp_path / f'{name}.npz')
    checkpoint.export_timm(tree, tmp_path / f'{name}.safetensors')
  plain, from_stacked = np.load(tmp_path / 'plain.npz'), np.load(tmp_path / 'stacked.npz')
  assert 'Transformer/encoderblock_1/MlpBlock_0/Dense_0/kernel' in from_stacked.files
  assert sorted(plain.files) == sorted(from_stacked.files)
  for key in plain.files:
    np.testing.assert_array_equal(from_stacked[key], plain[key], err_msg=key)
  timm_plain = st.load((tmp_path / 'plain.safetensors').read_bytes())
  timm_stacked = st.load((tmp_path / 'stacked.safetensors').read_bytes())
  assert sorted(timm_plain) == sorted(timm_stacked) and 'blocks.1.attn.qkv.weight' in timm_plain
  for key in timm_plain:
    np.testing.assert_array_equal(timm_stacked[key], timm_plain[key], err_msg=key)
  params = _without_pre_logits(params)
  config = _model_config('repr', representation_size=None)
  checkpoint.export_hf(params, config, tmp_path / 'hf_plain')
  checkpoint.export_hf(layer_stack.stack(params), config, tmp_path / 'hf_stacked')
  assert (tmp_path / 'hf_plain' / 'config.json').read_text() == (
      tmp_path / 'hf_stacked' / 'config.json'
  ).read_text()
  hf_plain = st.load((tmp_path / 'hf_plain' / 'model.safetensors').read_bytes())
  hf_stacked = st.load((tmp_path / 'hf_stacked' / 'model.safetensors').read_bytes())
  assert sorted(hf_plain) == sorted(hf_stacked)
  assert 'vit.encoder.layer.1.output.dense.weight' in hf_stacked
  for key in hf_plain:
    np.testing.assert_array_equal(hf_stacked[key], hf_plain[key], err_msg=key)


@pytest.mark.parametrize('name', ['repr', 'gap'])
def test_architecture_is_read_from_a_scanned_tree(name):
  _, init = _init(_model_config(name, scan_layers=True))
  config, num_classes = architecture.model_config_from_params(init)
  assert num_classes == 5
  assert config['transformer']['num_layers'] == 2 and config['transformer']['scan_layers']
  assert (config['transformer']['num_heads'], config['transformer']['mlp_dim']) == (2, 128)
  _, rebuilt = _init(config)
  assert jax.tree.map(np.shape, rebuilt) == jax.tree.map(np.shape, init)
  _, unscanned = _init(_model_config(name))
  assert not architecture.model_config_from_params(unscanned)[0]['transformer']['scan_layers']
