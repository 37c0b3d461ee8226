"""Stable Diffusion's VAE (vit_jax.models.vae): fidelity to diffusers, loading, errors, batches.

tests/fixtures/vae_tiny/ holds a tiny diffusers AutoencoderKL with every tensor perturbed,
and diffusers' own encoder and decoder outputs (made by tests/fixtures/make_vae_fixtures.py);
no torch or diffusers at test time. One load and one compile per program, shared by the file.
"""

import hashlib
import importlib.util
import json
import os
import shutil

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from safetensors import numpy as st

from vit_jax import errors
from vit_jax.checkpoints import vae_format
from vit_jax.models import vae

FIXTURE = os.path.join(os.path.dirname(__file__), 'fixtures', 'vae_tiny')
WEIGHTS = 'diffusion_pytorch_model.safetensors'
TOLERANCE = 1e-4  # relative to the largest magnitude of the output


@pytest.fixture(scope='module')
def tiny():
  module, params = vae.load(FIXTURE)
  io = dict(np.load(os.path.join(FIXTURE, 'io.npz')))
  return module, params, io


def _close(got, want):
  err = float(np.abs(np.asarray(got) - want).max() / np.abs(want).max())
  assert err < TOLERANCE, err


def _state_dict():
  return st.load_file(os.path.join(FIXTURE, WEIGHTS))


def _folder(tmp_path, config=None, state_dict=None):
  """A diffusers folder with the fixture's config and weights, or the ones given."""
  folder = tmp_path / 'vae'
  folder.mkdir(parents=True)
  if config is None:
    shutil.copy(os.path.join(FIXTURE, 'config.json'), folder)
  else:
    (folder / 'config.json').write_text(json.dumps(config))
  if state_dict is None:
    shutil.copy(os.path.join(FIXTURE, WEIGHTS), folder)
  else:
    st.save_file(state_dict, str(folder / WEIGHTS))
  return str(folder)


def _config(**changes):
  with open(os.path.join(FIXTURE, 'config.json')) as f:
    return {**json.load(f), **changes}


def test_encode_matches_diffusers(tiny):
  module, params, io = tiny
  mean, logvar = jax.jit(lambda p, x: module.apply({'params': p}, x, method=module.encode))(
      params, io['images']
  )
  assert mean.shape == logvar.shape == (2, 8, 8, 4)
  _close(mean, io['mean'])
  _close(logvar, io['logvar'])


def test_decode_matches_diffusers(tiny):
  module, params, io = tiny
  images = jax.jit(lambda p, z: module.apply({'params': p}, z, method=module.decode))(
      params, io['latents']
  )
  assert images.shape == (2, 16, 16, 3)
  _close(images, io['decoded'])


def test_parameter_tree_has_diffusers_names(tiny):
  module, params, _ = tiny
  flat = flax.traverse_util.flatten_dict(params, sep='/')
  assert len(flat) == len(_state_dict())
  assert flat['encoder/down_blocks_0/resnets_0/conv1/kernel'].shape == (3, 3, 8, 8)  # HWIO
  assert flat['encoder/down_blocks_1/resnets_0/conv_shortcut/kernel'].shape == (1, 1, 8, 12)
  assert flat['decoder/up_blocks_0/upsamplers_0/conv/kernel'].shape == (3, 3, 12, 12)
  assert flat['encoder/mid_block/attentions_0/group_norm/scale'].shape == (12,)
  linear = _state_dict()['decoder.mid_block.attentions.0.to_out.0.weight']
  np.testing.assert_array_equal(flat['decoder/mid_block/attentions_0/to_out_0/kernel'], linear.T)
  assert module.scaling_factor == vae.SD_SCALE_FACTOR == 0.18215
  assert module.downsample_factor == 2


def test_stable_diffusion_vae_has_diffusers_parameter_count():
  """83,653,863 parameters in 248 tensors, as diffusers' AutoencoderKL for sd-vae-ft-ema."""
  shapes = vae_format.expected_shapes(vae.AutoencoderKL(**vae.SD_VAE))
  assert (sum(int(np.prod(s)) for s in shapes.values()), len(shapes)) == (83_653_863, 248)


def test_legacy_attention_names_and_weights_file_path(tmp_path, tiny):
  """query/key/value/proj_attn (older sd-vae-ft-* files) load as to_q/to_k/to_v/to_out.0;
  a path to the weights file finds config.json beside it."""
  legacy = {
      '.query.': '.to_q.',
      '.key.': '.to_k.',
      '.value.': '.to_v.',
      '.proj_attn.': '.to_out.0.',
  }
  sd = {}
  for key, value in _state_dict().items():
    for old, new in legacy.items():
      key = key.replace(new, old)
    sd[key] = value
  assert 'encoder.mid_block.attentions.0.proj_attn.weight' in sd
  folder = _folder(tmp_path, state_dict=sd)
  _, params = vae.load(os.path.join(folder, WEIGHTS))
  jax.tree.map(np.testing.assert_array_equal, params, tiny[1])


def _hub_cache(root, repo_id, files):
  """huggingface_hub's cache layout (refs, blobs, snapshot symlinks) holding `files`."""
  repo = root / f'models--{repo_id.replace("/", "--")}'
  snapshot = repo / 'snapshots' / ('c' * 40)
  snapshot.mkdir(parents=True)
  (repo / 'refs').mkdir()
  (repo / 'refs' / 'main').write_text('c' * 40)
  (repo / 'blobs').mkdir()
  for name in files:
    with open(os.path.join(FIXTURE, name), 'rb') as f:
      data = f.read()
    blob = repo / 'blobs' / hashlib.sha256(data).hexdigest()
    blob.write_bytes(data)
    os.symlink(os.path.relpath(blob, snapshot), snapshot / name)
  return str(root)


def test_loads_through_the_path_layer_from_the_hub_cache(tmp_path, monkeypatch, tiny):
  """hf://ORG/NAME, as for stabilityai/sd-vae-ft-ema, offline from a Hub cache."""
  from huggingface_hub import constants

  cache = _hub_cache(tmp_path, 'org/vae', ('config.json', WEIGHTS))
  monkeypatch.setattr(constants, 'HF_HUB_CACHE', cache)
  monkeypatch.setattr(constants, 'HF_HUB_OFFLINE', True)
  module, params = vae.load('hf://org/vae')
  assert module == tiny[0]
  jax.tree.map(np.testing.assert_array_equal, params, tiny[1])


@pytest.mark.skipif(
    importlib.util.find_spec('torch') is not None, reason='with torch the .bin would be read'
)
def test_bin_only_folder_needs_torch(tmp_path):
  folder = tmp_path / 'bin_only'
  folder.mkdir()
  shutil.copy(os.path.join(FIXTURE, 'config.json'), folder)
  (folder / 'diffusion_pytorch_model.bin').write_bytes(b'PK\x03\x04 not really a pickle')
  with pytest.raises(errors.UserInputError, match=r'diffusion_pytorch_model.bin.*needs torch'):
    vae.load(str(folder))


def test_scaling_and_shift_factor_come_from_config_json(tmp_path):
  module, _ = vae.load(_folder(tmp_path, _config(scaling_factor=0.5, shift_factor=0.25)))
  assert (module.scaling_factor, module.shift_factor) == (0.5, 0.25)


def test_folder_without_config_json_is_one_clear_error(tmp_path):
  folder = tmp_path / 'weights_only'
  folder.mkdir()
  shutil.copy(os.path.join(FIXTURE, WEIGHTS), folder)
  with pytest.raises(errors.MissingInputError, match=rf'{folder}.*has no config\.json.*hf://'):
    vae.load(str(folder))


@pytest.mark.parametrize(
    'changes,match',
    [
        (
            dict(down_block_types=['DownEncoderBlock2D', 'AttnDownEncoderBlock2D']),
            r"config\.json: down_block_types=.*'AttnDownEncoderBlock2D'.*only 'DownEncoderBlock2D'",
        ),
        (dict(act_fn='gelu'), r"config\.json: act_fn='gelu' is not supported; use one of"),
        (dict(norm_num_groups=3), r'norm_num_groups=3 must divide every width'),
        (dict(_class_name='AutoencoderTiny'), r"_class_name='AutoencoderTiny' is not supported"),
    ],
)
def test_unsupported_config_is_one_clear_error(tmp_path, changes, match):
  with pytest.raises(errors.UserInputError, match=match):
    vae.load(_folder(tmp_path, _config(**changes)))


def test_weights_that_do_not_match_the_config_name_the_first_key(tmp_path):
  sd = _state_dict()
  # The config says 4 latent channels; a file for 8 fails at the first key it changes.
  bad = dict(sd, **{'decoder.conv_in.weight': np.zeros((12, 8, 3, 3), np.float32)})
  with pytest.raises(
      errors.UserInputError,
      match=r"key 'decoder.conv_in.weight' has shape \[12, 8, 3, 3\], "
      r'config.json implies \[12, 4, 3, 3\]',
  ):
    vae.load(_folder(tmp_path / 'a', state_dict=bad))
  extra = dict(sd, **{'encoder.mid_block.attentions.1.to_q.weight': np.zeros((12, 12))})
  with pytest.raises(errors.UserInputError, match=r"key 'encoder.mid_block.attentions.1.to_q"):
    vae.load(_folder(tmp_path / 'b', state_dict=extra))
  missing = {k: v for k, v in sd.items() if k != 'quant_conv.bias'}
  with pytest.raises(errors.UserInputError, match=r"no key 'quant_conv.bias' \(1 missing\)"):
    vae.load(_folder(tmp_path / 'c', state_dict=missing))


def test_vit_loader_points_to_the_vae_loader():
  from vit_jax import checkpoint

  with pytest.raises(errors.UserInputError, match=r'diffusers VAE .*vit_jax.models.vae.load'):
    checkpoint.load(os.path.join(FIXTURE, WEIGHTS))


def test_flax_and_diffusers_names_round_trip():
  for key, value in _state_dict().items():
    assert vae_format.diffusers_name(vae_format._to_flax(key, value)[0]) == key


def test_encode_to_latents_in_padded_batches(tiny):
  module, params, io = tiny
  latents = vae.encode_to_latents(module, params, io['images'], batch_size=3)
  assert latents.shape == (2, 8, 8, 4) and isinstance(latents, np.ndarray)
  _close(latents, io['mean'] * vae.SD_SCALE_FACTOR)


def test_encode_to_latents_samples_the_posterior(tiny):
  """The noise is drawn for all images at once: the same rng gives the same latents at any
  batch size."""
  module, params, io = tiny
  rng = jax.random.key(3)
  latents = vae.encode_to_latents(module, params, io['images'], rng=rng, batch_size=3)
  noise = jax.random.normal(rng, (2, 8, 8, 4))
  want = (io['mean'] + np.exp(0.5 * io['logvar']) * noise) * vae.SD_SCALE_FACTOR
  _close(latents, want)


def test_decode_latents_divides_by_the_scale_and_clips(tiny):
  module, params, io = tiny
  images = vae.decode_latents(module, params, io['latents'] * vae.SD_SCALE_FACTOR, batch_size=3)
  assert images.shape == (2, 16, 16, 3)
  _close(images, np.clip(io['decoded'], -1, 1))
  assert np.abs(io['decoded']).max() > 1  # the clip is tested


def test_batch_helpers_check_shapes_before_compiling(tiny):
  module, params, _ = tiny
  match = r'images of shape \[2, 15, 16, 3\].*multiples of 2'
  with pytest.raises(errors.UserInputError, match=match):
    vae.encode_to_latents(module, params, jnp.zeros((2, 15, 16, 3)))
  with pytest.raises(errors.UserInputError, match=r'latents of shape \[2, 8, 8, 3\]'):
    vae.decode_latents(module, params, np.zeros((2, 8, 8, 3)))
  assert vae.encode_to_latents(module, params, np.zeros((0, 16, 16, 3))).shape == (0, 8, 8, 4)
