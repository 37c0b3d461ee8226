"""diffusers AutoencoderKL folders (config.json + diffusion_pytorch_model.safetensors) ->
vit_jax.models.vae.AutoencoderKL and its parameters.

Loading is renaming and transposing only: `encoder.down_blocks.0.resnets.0.conv1.weight`
OIHW becomes `encoder/down_blocks_0/resnets_0/conv1/kernel` HWIO, a Linear's [out, in]
weight becomes an [in, out] kernel, a group norm's weight its scale. The mid-block attention
is read under diffusers' current names (to_q, to_k, to_v, to_out.0) or the legacy ones of
older sd-vae-ft-* files (query, key, value, proj_attn). The config and every key and shape
are checked against each other before anything compiles. Safetensors are read with numpy;
a folder with only `diffusion_pytorch_model.bin` needs torch (read with weights_only=True).
"""

import json
import re

from absl import logging
import flax
import jax
import jax.numpy as jnp
import numpy as np

from vit_jax import errors
from vit_jax import paths
from vit_jax.checkpoints import file_readers
from vit_jax.models import vae
from vit_jax.paths import downloads

CONFIG_NAME = 'config.json'
WEIGHTS_NAMES = ('diffusion_pytorch_model.safetensors', 'diffusion_pytorch_model.bin')
CLASS_NAME = 'AutoencoderKL'
_LEGACY_ATTENTION = {'query': 'to_q', 'key': 'to_k', 'value': 'to_v', 'proj_attn': 'to_out.0'}
# config.json fields that are the module's fields under the same name.
_FIELDS = (
    'in_channels',
    'out_channels',
    'block_out_channels',
    'layers_per_block',
    'latent_channels',
    'norm_num_groups',
    'act_fn',
    'use_quant_conv',
    'use_post_quant_conv',
    'mid_block_add_attention',
    'scaling_factor',
    'shift_factor',
)
# Fields that do not change what the model computes (tiling size, fp16 advice).
_IGNORED = ('sample_size', 'force_upcast', 'latents_mean', 'latents_std')
_DEFAULTS = dict(block_out_channels=(64,), layers_per_block=1, norm_num_groups=32)


def _bad(where, field, value, fix):
  return errors.UserInputError(f'{where}: {field}={value!r} {fix}')


def _positive_ints(value):
  ints = isinstance(value, (list, tuple)) and all(isinstance(v, int) for v in value)
  return ints and len(value) > 0 and min(value) > 0


def module_kwargs(config, where=CONFIG_NAME):
  """AutoencoderKL keyword arguments of a diffusers config dict; a UserInputError naming
  the field, its value and the fix for anything vit_jax does not build the same way."""
  name = config.get('_class_name', CLASS_NAME)
  if name != CLASS_NAME:
    raise _bad(where, '_class_name', name, f'is not supported: only {CLASS_NAME} folders load.')
  kwargs = {**_DEFAULTS, **{k: config[k] for k in _FIELDS if config.get(k) is not None}}
  widths = kwargs['block_out_channels']
  if not _positive_ints(widths):
    raise _bad(where, 'block_out_channels', widths, 'must be a list of positive integers.')
  kwargs['block_out_channels'] = tuple(widths)
  for field in ('layers_per_block', 'latent_channels', 'in_channels', 'out_channels'):
    if field in kwargs and not _positive_ints([kwargs[field]]):
      raise _bad(where, field, kwargs[field], 'must be a positive integer.')
  for field, kind in (('down_block_types', vae.DOWN_BLOCK), ('up_block_types', vae.UP_BLOCK)):
    types = config.get(field, [kind] * len(widths))
    unsupported = [t for t in types if t != kind]
    if unsupported:
      raise _bad(
          where, field, types, f'has {unsupported[0]!r}: only {kind!r} blocks are supported.'
      )
    if len(types) != len(widths):
      raise _bad(
          where,
          field,
          types,
          f'has {len(types)} blocks but block_out_channels {list(widths)} has {len(widths)}; '
          'give one block per width.',
      )
  if kwargs.get('act_fn', 'silu') not in vae.ACTIVATIONS:
    raise _bad(
        where, 'act_fn', kwargs['act_fn'], f'is not supported; use one of {list(vae.ACTIVATIONS)}.'
    )
  groups = kwargs['norm_num_groups']
  if not isinstance(groups, int) or groups < 1 or any(w % groups for w in widths):
    raise _bad(
        where,
        'norm_num_groups',
        groups,
        f'must divide every width of block_out_channels {list(widths)}.',
    )
  for field in ('latents_mean', 'latents_std'):
    if config.get(field) is not None:
      raise _bad(
          where,
          field,
          config[field],
          'is not supported: encode_to_latents and decode_latents apply only scaling_factor '
          'and shift_factor; remove it, or normalise the latents yourself.',
      )
  read = _FIELDS + _IGNORED + ('down_block_types', 'up_block_types')
  unknown = sorted(k for k in config if not k.startswith('_') and k not in read)
  if unknown:
    logging.warning('%s: fields %s are not read by vit_jax', where, unknown)
  return kwargs


def reject_in_vit_loader(keys):
  """For the ViT loaders: a clear error when given a diffusers VAE state dict."""
  if any(k.startswith(('encoder.down_blocks.', 'decoder.up_blocks.')) for k in keys):
    raise errors.UserInputError(
        'this is a diffusers VAE (AutoencoderKL) checkpoint (encoder.down_blocks / '
        'decoder.up_blocks keys), not a ViT one: load its folder with vit_jax.models.vae.load.'
    )


def flax_name(key):
  """The Flax path of a diffusers state-dict key: `a.0.b.weight` -> `a_0/b/weight`."""
  key = re.sub(
      r'(attentions\.\d+)\.(query|key|value|proj_attn)\.',
      lambda m: f'{m.group(1)}.{_LEGACY_ATTENTION[m.group(2)]}.',
      key,
  )
  out = []
  for part in key.split('.'):
    if part.isdigit() and out:
      out[-1] += f'_{part}'
    else:
      out.append(part)
  return '/'.join(out)


def _to_flax(name, value):
  """(Flax path, array in Flax layout) of one diffusers entry."""
  path = flax_name(name)
  if path.endswith('/weight'):
    leaf = {1: 'scale', 2: 'kernel', 4: 'kernel'}.get(value.ndim, 'weight')
    path = path[: -len('weight')] + leaf
    if value.ndim == 4:
      value = value.transpose(2, 3, 1, 0)  # OIHW -> HWIO
    elif value.ndim == 2:
      value = value.T  # (out, in) -> (in, out)
  return path, value


def _torch_shape(shape):
  """A Flax parameter's shape in diffusers' layout (for messages)."""
  if len(shape) == 4:
    return [shape[3], shape[2], shape[0], shape[1]]  # HWIO -> OIHW
  return list(shape[::-1])  # (in, out) -> (out, in); 1-D unchanged


def diffusers_name(path):
  """The diffusers state-dict key of a Flax path (inverse of flax_name, current names)."""
  path = re.sub(r'/(kernel|scale)$', '/weight', path)
  return re.sub(r'_(\d+)(?=/|$)', r'.\1', path).replace('/', '.')


def expected_shapes(module):
  """{Flax path: shape} of the module's parameters, traced without computing."""
  f = module.downsample_factor
  x = jax.ShapeDtypeStruct((1, f, f, module.in_channels), jnp.float32)
  tree = jax.eval_shape(module.init, jax.random.key(0), x)['params']
  return {k: v.shape for k, v in flax.traverse_util.flatten_dict(tree, sep='/').items()}


def state_dict_to_params(state_dict, module, where='the weights file'):
  """The parameter tree of `module` from a diffusers state dict; a UserInputError naming the
  first key that the config does not explain, or the first the config needs and is absent."""
  want = expected_shapes(module)
  flat, source = {}, {}
  for name in sorted(state_dict):
    path, value = _to_flax(name, np.asarray(state_dict[name], np.float32))
    if path not in want:
      raise errors.UserInputError(
          f'{where}: key {name!r} is not part of the model that config.json describes (no '
          f'{path!r} in it); the weights belong to another model or config.'
      )
    if value.shape != want[path]:
      raise errors.UserInputError(
          f'{where}: key {name!r} has shape {list(np.shape(state_dict[name]))}, config.json '
          f'implies {_torch_shape(want[path])}; the weights belong to another config.'
      )
    flat[path], source[path] = value, name
  missing = sorted(set(want) - set(flat))
  if missing:
    raise errors.UserInputError(
        f'{where}: no key {diffusers_name(missing[0])!r} ({len(missing)} missing), which '
        'config.json implies; the weights belong to another config or are incomplete.'
    )
  return flax.traverse_util.unflatten_dict(flat, sep='/')


def _folder_and_weights(path):
  """(folder, weights file) of a diffusers folder, or of a weights file inside one."""
  if paths.basename(path).endswith(('.safetensors', '.bin')):
    return paths.parent(path), path
  for name in WEIGHTS_NAMES:
    candidate = paths.join(path, name)
    if paths.exists(candidate):
      return path, candidate
  raise errors.MissingInputError(
      f'VAE folder {path!r} has no weights: none of {list(WEIGHTS_NAMES)}; give a diffusers '
      'AutoencoderKL folder (e.g. hf://stabilityai/sd-vae-ft-ema).'
  )


def read_config(folder):
  """The config.json dict of a diffusers folder; a one-line error when it is missing."""
  config_path = paths.join(folder, CONFIG_NAME)
  if not paths.exists(config_path):
    raise errors.MissingInputError(
        f'VAE folder {folder!r} has no {CONFIG_NAME}: give a diffusers AutoencoderKL folder '
        f'({CONFIG_NAME} beside diffusion_pytorch_model.safetensors), e.g. '
        'hf://stabilityai/sd-vae-ft-ema.'
    )
  try:
    return json.loads(paths.read_text(config_path))
  except ValueError as e:
    raise errors.UserInputError(f'{config_path!r} is not valid JSON ({e})') from e


def load(path, **module_overrides):
  """(AutoencoderKL, params) of a diffusers VAE folder, local, gs://, https:// or hf://.

  `module_overrides` set module fields the config does not hold (attention_impl, dtype)."""
  if not downloads.is_download(path) and not paths.exists(path):
    raise errors.MissingInputError(f'VAE folder {path!r} does not exist')
  folder, weights = _folder_and_weights(path)
  config_path = paths.join(folder, CONFIG_NAME)
  config = read_config(folder)
  module = vae.AutoencoderKL(**module_kwargs(config, config_path), **module_overrides)
  state_dict = file_readers.read(weights)
  params = state_dict_to_params(state_dict, module, f'{weights!r} (config {config_path!r})')
  return module, params
