"""Hugging Face `transformers` ViT checkpoints <-> vit_jax parameter paths.

Reads PyTorch state dicts (`model.safetensors`, sharded, `pytorch_model.bin`) and Flax ones
(`flax_model.msgpack`) of `ViTForImageClassification` (`vit.` prefix + `classifier`) and
`ViTModel` (no prefix, optional `pooler`); writes `ViTForImageClassification` folders.
PyTorch Linear weights are [out, in] and conv weights OIHW; Flax ones are already (in, out)
and HWIO. Ours split attention kernels by head. Every conversion is a transpose or reshape,
so weights round-trip bitwise.

The pooler (Dense + tanh on the class token after the final LayerNorm) is our `pre_logits`.
It is kept only when there is no `classifier`: `ViTForImageClassification` classifies the
class token itself, so a pooler next to a classifier is unused and is dropped.
"""

import json
import os
import re

from absl import logging
import flax
import numpy as np

from vit_jax import errors
from vit_jax import paths
from vit_jax.checkpoints import file_readers
from vit_jax.checkpoints import hf_model_config
from vit_jax.checkpoints import timm_format
from vit_jax.models import layer_stack

POSEMB = hf_model_config.POSEMB
HfConfig = hf_model_config.HfConfig
model_config_from_hf = hf_model_config.from_hf
ATTN = 'MultiHeadDotProductAttention_0/'
# HF module path (no `vit.` prefix) -> (our path, kind). Kinds say how tensors are laid out.
_TOP = {
    'embeddings.cls_token': ('cls', 'param'),
    'embeddings.position_embeddings': (POSEMB, 'param'),
    'embeddings.patch_embeddings.projection': ('embedding', 'conv'),
    'layernorm': ('Transformer/encoder_norm', 'norm'),
    'pooler.dense': ('pre_logits', 'dense'),
    'classifier': ('head', 'dense'),
}
_BLOCK = {
    'layernorm_before': ('LayerNorm_0', 'norm'),
    'attention.attention.query': (ATTN + 'query', 'qkv'),
    'attention.attention.key': (ATTN + 'key', 'qkv'),
    'attention.attention.value': (ATTN + 'value', 'qkv'),
    'attention.output.dense': (ATTN + 'out', 'out'),
    'layernorm_after': ('LayerNorm_1', 'norm'),
    'intermediate.dense': ('MlpBlock_0/Dense_0', 'dense'),
    'output.dense': ('MlpBlock_0/Dense_1', 'dense'),
}
_IGNORED = ('embeddings.mask_token',)  # ViTForMaskedImageModeling's; unused for images
_WEIGHT_NDIM = {'param': 3, 'conv': 4, 'norm': 1, 'dense': 2, 'qkv': 2, 'out': 2}
WEIGHT_FILES = (
    'model.safetensors',
    'model.safetensors.index.json',
    'flax_model.msgpack',
    'flax_model.msgpack.index.json',
    'pytorch_model.bin',
    'pytorch_model.bin.index.json',
)


def _hf_parts(key):
  """'vit.encoder.layer.0.x.weight' or 'params/vit/encoder/...' -> parts without prefixes."""
  parts = key.split('/') if '/' in key else key.split('.')
  if parts[0] == 'params':
    parts = parts[1:]
  return parts[1:] if parts[:1] == ['vit'] else parts


def is_hf(flat):
  """Whether a flat state dict has transformers' ViT names (PyTorch or Flax spelling)."""
  return any(
      _hf_parts(k)[:1] == ['embeddings'] or _hf_parts(k)[:2] == ['encoder', 'layer'] for k in flat
  )


def _leaf(key, kind, leaf, w, heads):
  """One HF tensor -> (our leaf name, array) for a module of `kind`."""
  allowed = ('weight', 'scale', 'bias') if kind == 'norm' else ('weight', 'kernel', 'bias')
  if leaf not in allowed:
    raise errors.UserInputError(
        f'unknown Hugging Face ViT key {key!r}: a {kind} layer has no '
        f'{leaf!r} (expected one of {allowed})'
    )
  ndim = 1 if leaf == 'bias' else _WEIGHT_NDIM[kind]
  if w.ndim != ndim:
    raise errors.UserInputError(
        f'Hugging Face ViT key {key!r} has shape {w.shape}; a {kind} '
        f'{leaf} has {ndim} dimensions'
    )
  if leaf == 'bias':
    return 'bias', w.reshape(heads, -1) if kind == 'qkv' else w
  if kind == 'norm':
    return 'scale', w
  if kind == 'conv':
    return 'kernel', np.transpose(w, (2, 3, 1, 0)) if leaf == 'weight' else w  # OIHW -> HWIO
  kernel = w.T if leaf == 'weight' else w  # (in, out)
  if kind == 'qkv':
    return 'kernel', kernel.reshape(kernel.shape[0], heads, -1)
  if kind == 'out':
    return 'kernel', kernel.reshape(heads, -1, kernel.shape[-1])
  return 'kernel', kernel


def _locate(key):
  """HF key -> (our module path, kind, leaf), or None for ignored keys."""
  parts = _hf_parts(key)
  name = '.'.join(parts)
  if name in _IGNORED:
    return None
  if name in _TOP and _TOP[name][1] == 'param':
    return _TOP[name][0], 'param', None
  module, leaf = '.'.join(parts[:-1]), parts[-1]
  block = re.fullmatch(r'encoder\.layer\.(\d+)\.(.+)', module)
  if block and block.group(2) in _BLOCK:
    path, kind = _BLOCK[block.group(2)]
    return f'Transformer/encoderblock_{int(block.group(1))}/{path}', kind, leaf
  if module in _TOP:
    return _TOP[module] + (leaf,)
  raise errors.UserInputError(
      f'unknown Hugging Face ViT key {key!r}: not part of ViTModel / ViTForImageClassification '
      '(other heads and architectures cannot be loaded into VisionTransformer)'
  )


def hf_to_flat(state_dict, hf_config=None, *, num_heads=None):
  """transformers ViT state dict (PyTorch or Flax names) -> our flat {'a/b/c': array}.

  `hf_config` (config.json as a dict) gives the head count and `qkv_bias`; without it heads
  come from `num_heads` or the standard widths. Checkpoints without q/k/v biases get zeros.
  """
  if hf_config is not None:
    hf_model_config.check_vit(hf_config)
    num_heads = hf_config.get('num_attention_heads', 12)
  located = {k: _locate(k) for k in state_dict}
  cls = [k for k, loc in located.items() if loc and loc[0] == 'cls']
  if not cls:
    raise errors.UserInputError('Hugging Face ViT checkpoint has no embeddings.cls_token')
  width = np.shape(state_dict[cls[0]])[-1]
  if num_heads is None:
    num_heads = timm_format.default_num_heads(width)
    logging.warning(
        'Hugging Face checkpoint without config.json: assuming %d heads for '
        'width %d (pass num_heads= if that is wrong)',
        num_heads,
        width,
    )
  if width % num_heads:
    raise errors.UserInputError(
        f'num_attention_heads={num_heads} does not divide the ' f'checkpoint width {width}'
    )
  out = {}
  for key, loc in located.items():
    if loc is None:
      continue
    path, kind, leaf = loc
    w = np.asarray(state_dict[key])
    if kind == 'param':
      if w.ndim != 3:
        raise errors.UserInputError(
            f'Hugging Face ViT key {key!r} has shape {w.shape}, ' 'expected (1, tokens, width)'
        )
      out[path] = w
    else:
      name, value = _leaf(key, kind, leaf, w, num_heads)
      out[f'{path}/{name}'] = value
  if 'head/kernel' in out and 'pre_logits/kernel' in out:
    logging.info(
        'Hugging Face checkpoint has a classifier and a pooler; the classifier reads '
        'the class token, so the unused pooler is dropped'
    )
    out = {k: v for k, v in out.items() if not k.startswith('pre_logits/')}
  _fill_qkv_bias(out, hf_config, num_heads)
  _check_complete(out, hf_config)
  return out


def _fill_qkv_bias(out, hf_config, heads):
  """Zero q/k/v biases for `qkv_bias=False` checkpoints (exactly what no bias computes)."""
  if any(re.search(r'/(query|key|value)/bias$', k) for k in out):
    return
  if hf_config is not None and hf_config.get('qkv_bias', True):
    return  # the completeness check names the missing biases
  for key in [k for k in out if re.search(r'/(query|key|value)/kernel$', k)]:
    out[key[: -len('kernel')] + 'bias'] = np.zeros((heads, out[key].shape[-1]), out[key].dtype)


def _check_complete(out, hf_config):
  layers = {
      int(m.group(1)) for k in out for m in [re.match(r'Transformer/encoderblock_(\d+)/', k)] if m
  }
  depth = (hf_config or {}).get('num_hidden_layers', max(layers, default=-1) + 1)
  if layers - set(range(depth)):
    raise errors.UserInputError(
        f'Hugging Face ViT checkpoint has layers {sorted(layers)} but '
        f'config.json says num_hidden_layers={depth}'
    )
  expected = [
      'cls',
      POSEMB,
      'embedding/kernel',
      'embedding/bias',
      'Transformer/encoder_norm/scale',
      'Transformer/encoder_norm/bias',
  ]
  for i in range(depth):
    for path, kind in _BLOCK.values():
      for leaf in ('scale' if kind == 'norm' else 'kernel', 'bias'):
        expected.append(f'Transformer/encoderblock_{i}/{path}/{leaf}')
  for module in ('head', 'pre_logits'):
    if any(k.startswith(module + '/') for k in out):
      expected += [module + '/kernel', module + '/bias']
  missing = [k for k in expected if k not in out]
  if missing:
    raise errors.UserInputError(
        f'Hugging Face ViT checkpoint lacks {len(missing)} tensors, first '
        f'{[_to_hf(k)[0] for k in missing[:4]]}; the file is incomplete or not a ViT'
    )


def _to_hf(key, prefix='vit.'):
  """Our path -> (PyTorch name in ViTForImageClassification, kind)."""
  module, leaf = key.rsplit('/', 1) if '/' in key else (key, None)
  torch_leaf = {'scale': 'weight', 'kernel': 'weight', 'bias': 'bias'}.get(leaf)
  for name, (path, kind) in _TOP.items():
    if kind == 'param' and path == key:
      return prefix + name, kind
    if kind != 'param' and path == module and torch_leaf:
      return f'{"" if name == "classifier" else prefix}{name}.{torch_leaf}', kind
  block = re.fullmatch(r'Transformer/encoderblock_(\d+)/(.+)', module)
  for name, (path, kind) in _BLOCK.items():
    if block and block.group(2) == path and torch_leaf:
      return f'{prefix}encoder.layer.{block.group(1)}.{name}.{torch_leaf}', kind
  raise errors.UserInputError(f'parameter {key!r} has no place in a Hugging Face ViT')


def flat_to_hf(flat):
  """Our flat {'a/b/c': array} -> ViTForImageClassification's PyTorch state dict."""
  sd = {}
  for key, w in flat.items():
    (name, kind), w, leaf = _to_hf(key), np.asarray(w), key.rsplit('/', 1)[-1]
    if leaf == 'bias':
      w = w.reshape(-1)
    elif kind == 'conv':
      w = np.transpose(w, (3, 2, 0, 1))  # HWIO -> OIHW
    elif kind in ('dense', 'qkv', 'out'):
      w = (w.reshape(w.shape[0], -1) if kind == 'qkv' else w.reshape(-1, w.shape[-1])).T
    sd[name] = np.ascontiguousarray(w, np.float32)
  return sd


def read_config(folder):
  """The folder's config.json as a dict (local or gs://)."""
  path = paths.join(folder, 'config.json')
  if not paths.exists(path):
    raise errors.MissingInputError(
        f'{folder!r} has no config.json; a directory loads only as a Hugging Face model '
        'folder (config.json next to the weights, as save_pretrained writes them) or, for '
        'inference and export, as a training workdir (the --workdir of a vit_jax run)'
    )
  try:
    return json.loads(paths.read_text(path))
  except ValueError as e:
    raise errors.UserInputError(f'{path!r} is not valid JSON ({e})') from e


def config_beside(path):
  """config.json next to a weights file, or None."""
  folder = paths.parent(path)
  return read_config(folder) if paths.exists(paths.join(folder, 'config.json')) else None


def config_for(path):
  """The config.json of a model folder, or the one beside a weights file; None without one.

  With `model_config_from_hf(config, params)` it gives what shapes cannot: GELU kind,
  LayerNorm epsilon, class names and image size (e.g. for inference).
  """
  return read_config(path) if paths.isdir(path) else config_beside(path)


def read_msgpack(path):
  """A Flax `flax_model.msgpack` as {'a/b/c': array} (msgpack, never pickle)."""
  try:
    tree = flax.serialization.msgpack_restore(paths.read_bytes(path))
  except Exception as e:  # msgpack raises several unrelated types for bad bytes
    raise errors.UserInputError(f'{path!r} is not a Flax msgpack checkpoint ({e})') from e
  if not isinstance(tree, dict):
    raise errors.UserInputError(f'{path!r} holds a {type(tree).__name__}, not a parameter tree')
  return {'/'.join(k): v for k, v in flax.traverse_util.flatten_dict(tree).items()}


def _read_file(path):
  return read_msgpack(path) if path.endswith('.msgpack') else file_readers.read(path)


def _read_index(path):
  """A sharded checkpoint: the index's weight_map names the shard files beside it."""
  try:
    shards = sorted(set(json.loads(paths.read_text(path))['weight_map'].values()))
  except (ValueError, KeyError, AttributeError) as e:
    raise errors.UserInputError(f'{path!r} is not a shard index with a weight_map ({e})') from e
  flat = {}
  for shard in shards:
    flat.update(_read_file(paths.join(paths.parent(path), shard)))
  return flat


def handles(path):
  """Whether `path` is for `read` (a directory or a `.msgpack` file), not file_readers."""
  return os.fspath(path).endswith('.msgpack') or paths.isdir(path)


def read(path):
  """(raw state dict, config dict or None) of a model folder or a Flax `.msgpack` file."""
  if paths.isdir(path):
    return read_folder(path)
  return read_msgpack(path), config_beside(path)


def read_folder(folder):
  """(raw state dict, config dict) of a Hugging Face model folder (local or gs://).

  Weights are read from the first of WEIGHT_FILES present (safetensors preferred).
  """
  config = read_config(folder)
  hf_model_config.check_vit(config, paths.join(folder, 'config.json'))
  names = set(paths.listdir(folder))
  for name in WEIGHT_FILES:
    if name in names:
      path = paths.join(folder, name)
      return (_read_index(path) if name.endswith('.index.json') else _read_file(path)), config
  raise errors.MissingInputError(
      f'{folder!r} has config.json but no weights: looked for {", ".join(WEIGHT_FILES)}'
  )


def export(params, model_config, folder, class_names=None, image_size=None):
  """Writes config.json + model.safetensors for ViTForImageClassification.from_pretrained.

  Raises UserInputError for models it cannot represent. Returns the config dict written.
  Stacked (scanned) blocks are written one per layer, as every Hugging Face ViT has them.
  """
  params = layer_stack.unstack(flax.core.unfreeze(params))
  flat = {'/'.join(k): np.asarray(v) for k, v in flax.traverse_util.flatten_dict(params).items()}
  config = hf_model_config.to_hf(flat, model_config, class_names, image_size)
  from safetensors import numpy as safetensors_numpy
  # transformers reads the 'format' metadata to tell PyTorch files from TF and Flax ones.
  paths.write_bytes(
      paths.join(folder, 'model.safetensors'),
      safetensors_numpy.save(flat_to_hf(flat), metadata={'format': 'pt'}),
  )
  paths.write_text(paths.join(folder, 'config.json'), json.dumps(config, indent=2) + '\n')
  return config
