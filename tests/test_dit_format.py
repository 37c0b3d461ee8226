"""DiT checkpoints: reading, renaming both ways, config inference and the errors it raises."""

import importlib.util
import os

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from safetensors import numpy as safetensors_numpy

from vit_jax import errors
from vit_jax.checkpoints import dit_format
from vit_jax.configs import models as model_configs
from vit_jax.models import dit

HERE = os.path.dirname(__file__)
FIXTURES = os.path.join(HERE, 'fixtures', 'dit')
P2 = os.path.join(FIXTURES, 'p2_sigma.safetensors')
P1 = os.path.join(FIXTURES, 'p1_nosigma.safetensors')


def _abstract_params(model, size=8, channels=4):
  x = jnp.zeros((2, size, size, channels))
  t = jnp.zeros((2,), jnp.int32)
  return jax.eval_shape(lambda: model.init(jax.random.key(0), x, t, t, train=False))['params']


def test_round_trip_is_bitwise():
  sd = safetensors_numpy.load_file(P2)
  params = dit_format.state_dict_to_params(sd)
  back = dit_format.params_to_state_dict(params, grid_size=4)
  assert set(back) == set(sd)
  for key, value in sd.items():
    assert back[key].shape == value.shape, key
    if key == 'pos_embed':  # recomputed, not copied
      np.testing.assert_allclose(back[key], value, atol=1e-7)
    else:
      np.testing.assert_array_equal(back[key], value, err_msg=key)


def test_layouts_follow_pytorch():
  sd = safetensors_numpy.load_file(P2)
  params = dit_format.state_dict_to_params(sd)
  np.testing.assert_array_equal(
      params['blocks_1']['attn']['qkv']['kernel'], sd['blocks.1.attn.qkv.weight'].T
  )
  np.testing.assert_array_equal(
      params['x_embedder']['proj']['kernel'][1, 0, 3], sd['x_embedder.proj.weight'][:, 3, 1, 0]
  )
  np.testing.assert_array_equal(
      params['y_embedder']['embedding_table']['embedding'], sd['y_embedder.embedding_table.weight']
  )


def test_loads_into_the_model_it_implies():
  params, config = dit_format.load(P2, scan_layers=True)
  assert config == dict(
      patch_size=2,
      hidden_size=32,
      depth=2,
      num_heads=1,
      mlp_ratio=4.0,
      class_dropout_prob=0.1,
      num_classes=10,
      learn_sigma=True,
      in_channels=4,
      out_channels=8,
      input_size=8,
  )
  assert params['blocks']['attn']['qkv']['kernel'].shape == (2, 32, 96)
  model = dit.DiT(num_classes=10, patch_size=2, hidden_size=32, depth=2, num_heads=4)
  dit_format.load(P2, expected=_abstract_params(model), learn_sigma=True)


@pytest.mark.parametrize('name', ['DiT-XL/2', 'DiT-S/8'])
def test_config_of_released_sizes(name):
  """Shapes only (zero-stride arrays): heads of the released widths (XL: 16 of 72)."""
  config = model_configs.MODEL_CONFIGS[name]
  abstract = _abstract_params(dit.from_config(config, 1000), size=32)
  sd = {
      dit_format.torch_key(path): np.broadcast_to(np.float32(0), _torch_shape(path, s.shape))
      for path, s in flax.traverse_util.flatten_dict(abstract).items()
  }
  got = dit_format.config_from_state_dict(sd)
  for field in ('patch_size', 'hidden_size', 'depth', 'num_heads', 'learn_sigma'):
    assert got[field] == config[field], field
  assert got['num_classes'] == 1000 and got['mlp_ratio'] == 4.0


def _torch_shape(path, shape):
  if path[-1] == 'kernel' and len(shape) == 4:
    return (shape[3], shape[2], shape[0], shape[1])
  return shape[::-1] if path[-1] == 'kernel' else shape


def test_npz_reads_as_safetensors(tmp_path):
  sd = safetensors_numpy.load_file(P1)
  np.savez(tmp_path / 'dit.npz', **sd)
  a, _ = dit_format.load(tmp_path / 'dit.npz')
  b, _ = dit_format.load(P1)
  jax.tree.map(np.testing.assert_array_equal, a, b)


def test_learned_sigma_mismatch_is_named():
  with pytest.raises(
      errors.UserInputError,
      match=r'learn_sigma=True but the checkpoint has ' r'no learned variance .* learn_sigma=False',
  ):
    dit_format.load(P1, learn_sigma=True)
  with pytest.raises(
      errors.UserInputError,
      match=r'learn_sigma=False but the checkpoint has ' r'learned variance .* learn_sigma=True',
  ):
    dit_format.load(P2, learn_sigma=False)


def test_shape_mismatch_names_key_and_shapes():
  wider = dit.DiT(num_classes=10, patch_size=2, hidden_size=64, depth=2, num_heads=4)
  with pytest.raises(
      errors.UserInputError,
      match=r"'blocks.0.adaLN_modulation.1.bias' gives "
      r'.*\(192,\), but the model expects \(384,\)',
  ):
    dit_format.load(P2, expected=_abstract_params(wider))
  deeper = dit.DiT(num_classes=10, patch_size=2, hidden_size=32, depth=3, num_heads=4)
  with pytest.raises(errors.UserInputError, match=r"checkpoint has no 'blocks\.2\..* shape"):
    dit_format.load(P2, expected=_abstract_params(deeper))


def test_vit_checkpoint_in_the_dit_loader_and_back():
  with pytest.raises(errors.UserInputError, match='ViT checkpoint .* vit_jax.checkpoint.load'):
    dit_format.load(os.path.join(HERE, 'fixtures', 'gap.npz'))
  with pytest.raises(
      errors.UserInputError, match=r'a DiT .* checkpoint .*python -m vit_jax\.sample'
  ):
    dit_format.reject_in_vit_loader(safetensors_numpy.load_file(P2))
  dit_format.reject_in_vit_loader(['cls_token', 'patch_embed.proj.weight'])  # a ViT: fine
  with pytest.raises(errors.UserInputError, match='not a DiT state dict'):
    dit_format.state_dict_to_params({'foo.weight': np.zeros(3)})


def test_learned_pos_embed_is_refused():
  sd = safetensors_numpy.load_file(P2)
  sd['pos_embed'] = sd['pos_embed'] + 0.01
  with pytest.raises(errors.UserInputError, match='not the fixed 2-D sin-cos'):
    dit_format.state_dict_to_params(sd)


@pytest.mark.skipif(importlib.util.find_spec('torch') is not None, reason='torch installed')
def test_pytorch_file_without_torch_names_the_fix(tmp_path):
  (tmp_path / 'DiT-XL-2-256x256.pt').write_bytes(b'PK\x03\x04 not read')
  with pytest.raises(errors.UserInputError, match=r'needs torch.*pip install torch'):
    dit_format.load(tmp_path / 'DiT-XL-2-256x256.pt')


def test_missing_and_foreign_files(tmp_path):
  with pytest.raises(errors.MissingInputError, match='does not exist'):
    dit_format.load(tmp_path / 'none.safetensors')
  (tmp_path / 'notes.txt').write_text('hello world')
  with pytest.raises(errors.UserInputError, match='not a checkpoint file'):
    dit_format.load(tmp_path / 'notes.txt')


def test_checkpoint_load_detects_a_dit_file_and_vit_consumers_refuse_it():
  from vit_jax import checkpoint
  from vit_jax import inference

  fmt, params = checkpoint.load_with_format(P2)
  expected, _ = dit_format.load(P2)
  assert fmt == 'DiT'
  assert jax.tree.all(jax.tree.map(np.array_equal, params, expected))
  with pytest.raises(errors.UserInputError, match='not a classifier.*vit_jax.sample'):
    inference.build(P2)
  with pytest.raises(errors.UserInputError, match='DiT .*not a ViT'):
    checkpoint.load_pretrained(pretrained_path=P2, init_params={}, model_config={})
