"""Checkpoints are never loaded silently wrong: strict loading and errors that name the file."""

import functools
import json
import pathlib
import struct

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from vit_jax import checkpoint
from vit_jax import errors
from vit_jax.models import VisionTransformer

FIXTURES = pathlib.Path(__file__).parent / 'fixtures'


def _model_config(name, **overrides):
  cfg = json.loads((FIXTURES / f'{name}_config.json').read_text())
  return dict(cfg['model_config'], **overrides)


def _init(model_config, image=(32, 32), num_classes=5):
  model = VisionTransformer(num_classes=num_classes, **model_config)
  shapes = jax.eval_shape(
      functools.partial(model.init, train=False),
      jax.random.PRNGKey(0),
      jnp.zeros((1,) + image + (3,)),
  )['params']
  return jax.tree.map(lambda s: np.full(s.shape, 7.0, s.dtype), shapes)


def _load(path, model_config, **kwargs):
  return checkpoint.load_pretrained(
      pretrained_path=path,
      init_params=_init(model_config),
      model_config=ml_collections.ConfigDict(model_config),
      **kwargs,
  )


def test_a_file_that_does_not_fit_the_model_is_an_error_unless_not_strict():
  # gap.npz has no class token; a 'token' model needs one: a silent load would leave it random.
  token_model = _model_config('gap', classifier='token')
  with pytest.raises(
      errors.UserInputError,
      match=r'gap\.npz \(original \(Google npz\) checkpoint\) does not fit '
      r'config\.model: 1 model parameters are not in the file '
      r"\(e\.g\. \['cls'\]\).*pretrained_strict=False",
  ):
    _load(FIXTURES / 'gap.npz', token_model)
  deeper = _model_config('gap')
  deeper['transformer'] = dict(deeper['transformer'], num_layers=3)
  with pytest.raises(errors.UserInputError, match=r'encoderblock_2'):
    _load(FIXTURES / 'gap.npz', deeper)
  params = _load(FIXTURES / 'gap.npz', deeper, strict=False)  # a partial load on purpose
  np.testing.assert_array_equal(  # kept at init
      params['Transformer']['encoderblock_2']['LayerNorm_0']['scale'], np.full(64, 7.0)
  )
  gap = np.load(FIXTURES / 'gap.npz')
  np.testing.assert_array_equal(params['embedding']['kernel'], gap['embedding/kernel'])


def test_unknown_keys_name_the_format_and_samples(tmp_path):
  np.savez(tmp_path / 'other.npz', **{'encoder/layer0/w': np.zeros(3, np.float32)})
  with pytest.raises(
      errors.UserInputError,
      match=r'other\.npz \(original \(Google npz\) checkpoint\).*not in the '
      r"file \(e\.g\. \['Transformer/.*1 file entries are not in the "
      r"model \(e\.g\. \['encoder/layer0/w'\]\)",
  ):
    _load(tmp_path / 'other.npz', _model_config('gap'))


def test_timm_file_into_a_model_of_other_depth_names_timm(tmp_path):
  params = checkpoint.load(FIXTURES / 'gap.npz')
  checkpoint.export_timm(params, tmp_path / 'gap.safetensors')
  deeper = _model_config('gap')
  deeper['transformer'] = dict(deeper['transformer'], num_layers=3)
  with pytest.raises(errors.UserInputError, match=r'\(timm checkpoint\).*encoderblock_2'):
    _load(tmp_path / 'gap.safetensors', deeper)


def test_transposed_new_grid_is_rejected():
  config = _model_config('repr')
  init = _init(config, image=(8, 16))  # patch 4: a 2x4 grid
  with pytest.raises(
      errors.UserInputError, match=r"new_grid=\(4, 2\) is not the model's grid " r'\(2, 4\)'
  ):
    checkpoint.load_pretrained(
        pretrained_path=FIXTURES / 'repr.npz',
        init_params=init,
        model_config=ml_collections.ConfigDict(config),
        model_grid=(2, 4),
        new_grid=(4, 2),
    )
  params = checkpoint.load_pretrained(
      pretrained_path=FIXTURES / 'repr.npz',
      init_params=init,
      model_config=ml_collections.ConfigDict(config),
      model_grid=(2, 4),
  )
  assert params['Transformer']['posembed_input']['pos_embedding'].shape == (1, 9, 64)


@pytest.mark.parametrize(
    'name,content,message',
    [
        ('notes.npz', b'learning rate 0.03\nsteps 100\n', r"text file \(it starts with 'learning"),
        (
            'ViT-B_16.npz',
            b'version https://git-lfs.github.com/spec/v1\noid sha256:ab\n',
            r'Git LFS pointer.*git lfs pull',
        ),
        ('model.safetensors', b'<!DOCTYPE html><html>403 Forbidden</html>', 'HTML page'),
        ('empty.npz', b'', r'is empty \(0 bytes\)'),
        ('empty.safetensors', b'', r'is empty \(0 bytes\)'),
    ],
)
def test_files_that_are_not_checkpoints_are_named(tmp_path, name, content, message):
  (tmp_path / name).write_bytes(content)
  with pytest.raises(errors.UserInputError, match=message) as info:
    checkpoint.load(tmp_path / name)
  assert str(tmp_path / name) in str(info.value)
  assert 'allow_pickle' not in str(info.value)


def test_truncated_npz_names_the_path(tmp_path):
  data = (FIXTURES / 'gap.npz').read_bytes()
  for cut in (len(data) // 2, len(data) - 30, 100):
    (tmp_path / 'cut.npz').write_bytes(data[:cut])
    with pytest.raises(errors.UserInputError, match=r"cut\.npz' is truncated or damaged"):
      checkpoint.load(tmp_path / 'cut.npz')


def _safetensors_bytes(tmp_path):
  checkpoint.export_timm(checkpoint.load(FIXTURES / 'gap.npz'), tmp_path / 'model.safetensors')
  return (tmp_path / 'model.safetensors').read_bytes()


def test_truncated_safetensors_names_the_path_and_the_entry(tmp_path):
  data = _safetensors_bytes(tmp_path)
  (tmp_path / 'cut.safetensors').write_bytes(data[: len(data) - 100])
  with pytest.raises(
      errors.UserInputError,
      match=r"cut\.safetensors' is not a sound safetensors file: entry '.+' "
      r'ends at byte \d+ of the data.*truncated',
  ):
    checkpoint.load(tmp_path / 'cut.safetensors')
  (tmp_path / 'head.safetensors').write_bytes(data[:20])
  with pytest.raises(errors.UserInputError, match=r'metadata, the file has 12'):
    checkpoint.load(tmp_path / 'head.safetensors')


def test_safetensors_entry_of_the_wrong_size_is_named(tmp_path):
  data = _safetensors_bytes(tmp_path)
  (size,) = struct.unpack('<Q', data[:8])
  header = json.loads(data[8 : 8 + size])
  header['pos_embed']['shape'] = [1, 64, 63]  # 64 x 64 floats stored
  text = json.dumps(header, separators=(',', ':')).encode().ljust(size)
  (tmp_path / 'bad.safetensors').write_bytes(data[:8] + text + data[8 + size :])
  with pytest.raises(
      errors.UserInputError,
      match=r"entry 'pos_embed' is declared F32 of shape \[1, 64, 63\] "
      r'\(16128 bytes\) but spans 16384 bytes',
  ):
    checkpoint.load(tmp_path / 'bad.safetensors')


def test_timm_tensor_of_the_wrong_shape_is_named(tmp_path):
  from safetensors import numpy as safetensors_numpy

  data = _safetensors_bytes(tmp_path)
  sd = dict(safetensors_numpy.load(data))
  sd['blocks.1.attn.qkv.weight'] = sd['blocks.1.attn.qkv.weight'][:180]  # 192 rows expected
  (tmp_path / 'qkv.safetensors').write_bytes(safetensors_numpy.save(sd))
  with pytest.raises(
      errors.UserInputError,
      match=r"timm entry 'blocks\.1\.attn\.qkv\.weight' has shape \(180, 64\)",
  ):
    checkpoint.load(tmp_path / 'qkv.safetensors')
