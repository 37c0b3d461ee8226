"""Pretrained weights in and out: Google npz (original, Linen, AugReg, big_vision) and timm.

`load(path)` detects the format and returns the parameter tree of `VisionTransformer` as
nested dicts of float32 numpy arrays. Loading is renaming keys and exact reshapes only; no
number is re-derived. `load_pretrained` adds the original's fine-tuning semantics (head reset,
pre_logits drop, position-embedding resize). Files are never unpickled.

Files have one layout, one `Transformer/encoderblock_N` per layer. A scanned model
(transformer.scan_layers) gets its blocks stacked after every renaming and check
(`load(..., scan_layers=True)`, `load_pretrained` with scanned `init_params`); the writers
accept either layout and write the file one.
"""

import io
import re

from absl import logging
import flax
import jax
import numpy as np
import scipy.ndimage

from vit_jax import errors
from vit_jax import paths
from vit_jax.checkpoints import dit_format
from vit_jax.checkpoints import file_readers
from vit_jax.checkpoints import hf_format
from vit_jax.checkpoints import timm_format
from vit_jax.checkpoints import vae_format
from vit_jax.models import layer_stack

# Pre-Linen (released) block names -> current Linen names.
_PRE_LINEN = {
    'MultiHeadDotProductAttention_1': 'MultiHeadDotProductAttention_0',
    'LayerNorm_2': 'LayerNorm_1',
    'MlpBlock_3': 'MlpBlock_0',
}
POSEMB_PATH = 'Transformer/posembed_input/pos_embedding'


def _to_float32(name, value):
  value = np.asarray(value)
  if value.dtype.kind == 'V' and value.dtype.itemsize == 2:  # bfloat16 saved without ml_dtypes
    return (value.view(np.uint16).astype(np.uint32) << 16).view(np.float32)
  if value.dtype.kind not in 'fiub' and value.dtype.name != 'bfloat16':
    raise errors.UserInputError(f'checkpoint entry {name!r} has unsupported dtype {value.dtype}')
  return value.astype(np.float32) if value.dtype != np.float32 else value


def _is_big_vision(flat):
  return any(k.startswith(('params/', 'img/')) for k in flat) or 'pos_embedding' in flat


def _from_big_vision(flat):
  """big_vision layout -> original layout: strip prefixes, unscan blocks, add cls posemb row.

  A two-tower file (SigLIP, LiT: `img/`, `txt/`, temperature `t`, bias `b`) gives its image
  tower.
  """
  if any(re.match(r'^(params/)?img/', k) for k in flat):
    flat = {k: v for k, v in flat.items() if re.match(r'^(params/)?img/', k)}
  out = {}
  for key, value in flat.items():
    key = re.sub(r'^(params/)?(img/)?', '', key)
    scanned = re.match(r'Transformer/encoderblock/(.+)', key)
    if scanned:  # leading depth axis: one entry per block
      for i, block_value in enumerate(value):
        out[f'Transformer/encoderblock_{i}/{scanned.group(1)}'] = block_value
    else:
      out[key] = value
  if 'pos_embedding' in out:
    pe = out.pop('pos_embedding')
    if 'cls' in out:
      # big_vision prepends the class token after adding the embedding, so a zero row is exact.
      pe = np.concatenate([np.zeros_like(pe[:, :1]), pe], axis=1)
    out[POSEMB_PATH] = pe
  return out


def _normalise_names(flat):
  out = {}
  for key, value in flat.items():
    parts = key.split('/')
    parts = [
        _PRE_LINEN.get(p, p) if i >= 2 and parts[0] == 'Transformer' else p
        for i, p in enumerate(parts)
    ]
    key = '/'.join(parts)
    if value.ndim == 4 and re.search(r'(^|/)gn[^/]*/(scale|bias)$', key):
      value = value.reshape(-1)  # old hybrid files store GroupNorm params as (1, 1, 1, C)
    out[key] = value
  return out


def _read(path):
  """(local path, flat {name: array} as stored, a Hugging Face folder's config.json or None)."""
  path = paths.local_copy(path)  # https:// and hf:// once into their caches; others as given
  if hf_format.handles(path):  # a Hugging Face model folder or a Flax .msgpack
    return (path, *hf_format.read(path))
  return path, file_readers.read(path), None


def _vit_flat(path, flat, hf_config, num_heads):
  """(format name, flat {'a/b': float32 array} in the original layout) of a ViT checkpoint."""
  dit_format.reject_in_vit_loader(flat)
  vae_format.reject_in_vit_loader(flat)
  if hf_format.is_hf(flat):
    fmt, flat = 'Hugging Face', hf_format.hf_to_flat(
        flat, hf_config or hf_format.config_beside(path), num_heads=num_heads
    )
  elif timm_format.is_timm(flat):
    fmt, flat = 'timm', timm_format.timm_to_flat(flat, num_heads=num_heads)
  elif _is_big_vision(flat):
    fmt, flat = 'big_vision', _from_big_vision(flat)
  else:
    fmt = 'original (Google npz)'
  return fmt, {k: _to_float32(k, v) for k, v in _normalise_names(flat).items()}


def _load_flat(path, num_heads=None):
  """(format name, flat ViT parameters in the original layout); a DiT file is refused."""
  return _vit_flat(*_read(path), num_heads)


def load_with_format(path, *, num_heads=None, scan_layers=False):
  """(format name, parameter tree) of any supported checkpoint: a VisionTransformer tree, or
  for a facebookresearch/DiT state dict ('DiT') the tree of `vit_jax.models.dit.DiT`."""
  path, flat, hf_config = _read(path)
  if dit_format.is_dit(flat):
    return 'DiT', dit_format.state_dict_to_params(
        {k: np.asarray(v, np.float32) for k, v in flat.items()}, scan_layers=scan_layers
    )
  fmt, flat = _vit_flat(path, flat, hf_config, num_heads)
  tree = flax.traverse_util.unflatten_dict({tuple(k.split('/')): v for k, v in flat.items()})
  return fmt, layer_stack.to_layout(tree, scan_layers)


def load(path, *, num_heads=None, scan_layers=False):
  """Reads any supported checkpoint file into its parameter tree (VisionTransformer, or DiT
  for a facebookresearch/DiT state dict).

  `num_heads` is only needed for timm files of non-standard widths (timm does not store it);
  `scan_layers=True` stacks the blocks for a model with transformer.scan_layers=True.
  """
  return load_with_format(path, num_heads=num_heads, scan_layers=scan_layers)[1]


def _flatten(tree):
  """{'a/b/c': numpy array} in the file layout (stacked blocks unstacked)."""
  tree = jax.tree.map(np.asarray, flax.core.unfreeze(tree))
  return {
      '/'.join(k): v for k, v in flax.traverse_util.flatten_dict(layer_stack.unstack(tree)).items()
  }


def save(params, path):
  """Writes params as an npz in the original's (Linen-named) layout (local or gs://)."""
  buffer = io.BytesIO()
  np.savez(buffer, **_flatten(params))
  paths.write_bytes(path, buffer.getvalue())


def export_timm(params, path):
  """Writes params under timm's ViT state-dict names to a `.safetensors` file."""
  from safetensors import numpy as safetensors_numpy

  sd = timm_format.flat_to_timm(_flatten(params))
  paths.write_bytes(
      path, safetensors_numpy.save({k: np.ascontiguousarray(v, np.float32) for k, v in sd.items()})
  )


def export_hf(params, model_config, folder, *, class_names=None, image_size=None):
  """Writes a Hugging Face ViTForImageClassification folder (config.json + model.safetensors)."""
  return hf_format.export(
      params, model_config, folder, class_names=class_names, image_size=image_size
  )


def _grid_shape(num_tokens, given, what):
  if given is not None:
    if given[0] * given[1] != num_tokens:
      raise errors.UserInputError(
          f'{what}={tuple(given)} does not match {num_tokens} position tokens'
      )
    return tuple(given)
  side = int(round(np.sqrt(num_tokens)))
  if side * side != num_tokens:
    raise errors.UserInputError(
        f'{num_tokens} position tokens are not a square grid; pass {what}=(h, w)'
    )
  return side, side


def resize_posemb(posemb, new_num_tokens, *, num_prefix_tokens, old_grid=None, new_grid=None):
  """Resamples a [1, prefix + h*w, D] embedding to another grid, keeping the prefix rows.

  Bilinear with corners aligned, exactly as the original: scipy.ndimage.zoom(order=1).
  """
  prefix, grid = posemb[:, :num_prefix_tokens], posemb[0, num_prefix_tokens:]
  gh, gw = _grid_shape(grid.shape[0], old_grid, 'old_grid')
  nh, nw = _grid_shape(new_num_tokens - num_prefix_tokens, new_grid, 'new_grid')
  logging.info('Resizing position embedding grid %s -> %s', (gh, gw), (nh, nw))
  grid = grid.reshape(gh, gw, -1)
  grid = scipy.ndimage.zoom(grid, (nh / gh, nw / gw, 1), order=1)
  return np.concatenate([prefix, grid.reshape(1, nh * nw, -1)], axis=1)


def _mismatch_cause(key, got, want):
  """The likely cause of a parameter shape that differs: named by the axes that differ."""
  if key == POSEMB_PATH:
    return "the image size or patch size differs from the checkpoint's"
  if key.startswith('head/'):
    return "num_classes differs from the checkpoint's"
  if key.split('/')[0] in ('embedding', 'conv_root') and len(got) == len(want) == 4:
    if got[2] != want[2] and (got[:2], got[3]) == (want[:2], want[3]):
      return (
          f'the checkpoint takes {got[2]}-channel images and the model {want[2]}-channel '
          f'ones: set config.pp.channels={got[2]} (the images are converted)'
      )
    if got[:2] != want[:2] and key.startswith('embedding'):
      return (
          f'the checkpoint has {got[0]}x{got[1]} patches and the model {want[0]}x{want[1]} '
          '(config.model.patches.size)'
      )
  return 'the model name (width, depth, heads, patch size) does not fit the checkpoint'


def check_shapes(restored, expected, *, context=''):
  """Raises a ValueError naming the first key whose shape differs, and the likely cause.

  `expected` may hold arrays or jax.ShapeDtypeStructs. Returns (missing, extra) keys.
  """
  shapes = lambda tree: {
      '/'.join(k): tuple(v.shape)
      for k, v in flax.traverse_util.flatten_dict(flax.core.unfreeze(tree)).items()
  }
  flat_r, flat_e = shapes(restored), shapes(expected)
  for key in sorted(set(flat_r) & set(flat_e)):
    if flat_r[key] != flat_e[key]:
      raise errors.UserInputError(
          f'{context}parameter {key}: the model expects shape '
          f'{flat_e[key]}, the checkpoint has {flat_r[key]}; likely '
          f'cause: {_mismatch_cause(key, flat_r[key], flat_e[key])}.'
      )
  return sorted(set(flat_e) - set(flat_r)), sorted(set(flat_r) - set(flat_e))


def _fit_posemb(restored, init, model_grid, old_grid, new_grid):
  """Resizes the checkpoint's position embedding to the model's grid (prefix rows kept)."""
  if new_grid is not None and model_grid is not None and tuple(new_grid) != tuple(model_grid):
    raise errors.UserInputError(
        f"new_grid={tuple(new_grid)} is not the model's grid {tuple(model_grid)} (rows, "
        'columns of patches); a transposed grid would resample the embedding wrongly. Omit '
        "new_grid or give the model's."
    )
  new_grid = new_grid if new_grid is not None else model_grid
  if POSEMB_PATH in restored and POSEMB_PATH in init:
    old, new = restored[POSEMB_PATH], init[POSEMB_PATH]
    if old.shape != new.shape:
      prefix = 1 if 'cls' in init else 0
      restored[POSEMB_PATH] = resize_posemb(
          old, new.shape[1], num_prefix_tokens=prefix, old_grid=old_grid, new_grid=new_grid
      )


def load_pretrained(
    *,
    pretrained_path,
    init_params,
    model_config,
    old_grid=None,
    new_grid=None,
    model_grid=None,
    strict=True,
):
  """Loads a checkpoint for fine-tuning, with the original's semantics.

  - drops `pre_logits` when `model_config.representation_size` is None;
  - takes the head from `init_params` (so num_classes may differ);
  - resizes the position embedding when the grid differs (class-token row kept; non-square
    grids through `old_grid` / `new_grid` = (h, w); `model_grid`, the model's (h, w), is the
    default new grid and rejects a transposed `new_grid`);
  - strict: every other parameter of the model must come from the file and every entry of
    the file must be used, else an error names the format and samples of both; `strict=False`
    keeps missing ones at their `init_params` values and ignores extra ones (logged).
  Returns a tree with the structure of `init_params`: with stacked blocks (a scanned model)
  the checks and the merge run in the file layout (errors name `encoderblock_N`) and the
  blocks are stacked last.
  """
  heads = (model_config.get('transformer') or {}).get('num_heads')
  fmt, restored = _load_flat(pretrained_path, num_heads=heads)
  init = _flatten(init_params)
  if model_config.get('representation_size') is None:
    if any(k.startswith('pre_logits/') for k in restored):
      logging.info('load_pretrained: dropping pre_logits (representation_size is None)')
    restored = {k: v for k, v in restored.items() if not k.startswith('pre_logits/')}
  restored = {k: v for k, v in restored.items() if not k.startswith('head/')}
  reset = {k for k in init if k.startswith('head/')}
  missing = sorted(set(init) - set(restored) - reset)
  extra = sorted(set(restored) - set(init))
  if strict and (missing or extra):
    raise errors.UserInputError(
        f'{pretrained_path} ({fmt} checkpoint) does not fit config.model: '
        f'{len(missing)} model parameters are not in the file (e.g. {missing[:4]}), '
        f'{len(extra)} file entries are not in the model (e.g. {extra[:4]}). Pick the model '
        '(name, classifier, representation_size, resnet) that the checkpoint was trained '
        'with, or set config.pretrained_strict=False to load the matching part on purpose.'
    )
  restored.update({k: init[k] for k in reset})
  _fit_posemb(restored, init, model_grid, old_grid, new_grid)
  check_shapes(restored, init, context=f'{pretrained_path}: ')
  if missing:
    logging.warning(
        'load_pretrained: keys missing from %s (kept at init): %s', pretrained_path, missing
    )
  if extra:
    logging.warning('load_pretrained: extra keys in %s (ignored): %s', pretrained_path, extra)
  merged = {k: restored.get(k, v).astype(v.dtype) for k, v in init.items()}
  merged = flax.traverse_util.unflatten_dict({tuple(k.split('/')): v for k, v in merged.items()})
  return layer_stack.to_layout(merged, layer_stack.is_stacked(init_params))
