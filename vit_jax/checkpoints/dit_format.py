"""facebookresearch/DiT state dicts (e.g. `DiT-XL-2-256x256.pt`) <-> vit_jax DiT parameters.

Loading is renaming and transposing only: `blocks.3.attn.qkv.weight` [out, in] becomes
`blocks_3/attn/qkv/kernel` [in, out], the patch conv OIHW becomes HWIO, the label table's
`weight` becomes `embedding`. The frozen `pos_embed` buffer is checked against the constant
the model computes, and gives the input size. Files: `.safetensors` and `.npz` read with numpy
only; PyTorch pickles (`.pt`, `.pth`) need torch and are read with `weights_only=True` (a
DiT training checkpoint {'model', 'ema', ...} gives its EMA weights, as the original's
sampler does).
"""

import re

import flax
import jax
import numpy as np

from vit_jax import errors
from vit_jax import paths
from vit_jax.checkpoints import file_readers
from vit_jax.models import dit_layers
from vit_jax.models.dit import SCANNED_BLOCK

DIT_MARKERS = ('x_embedder.proj.weight', 't_embedder.mlp.0.weight')
# Keys or prefixes of ViT checkpoints: timm / Hugging Face state dicts and Google npz paths.
_VIT_MARKERS = ('cls_token', 'patch_embed.', 'vit.', 'Transformer/', 'embedding/kernel', 'cls')
# Heads of the released sizes (DiT-XL: 1152 = 16 heads of 72); otherwise width // 64.
_STANDARD_HEADS = {384: 6, 768: 12, 1024: 16, 1152: 16}


def is_dit(keys):
  """Whether the names of a state dict are DiT's (x_embedder / t_embedder present)."""
  return any(k in DIT_MARKERS for k in keys)


def is_vit(keys):
  return any(k.startswith(_VIT_MARKERS) for k in keys)


def _require_dit(keys):
  keys = list(keys)
  if is_dit(keys):
    return
  if is_vit(keys):
    raise errors.UserInputError(
        'this is a ViT checkpoint (it has ViT keys such as cls_token / patch_embed / '
        'Transformer/...), not a DiT one (x_embedder.proj.weight, t_embedder.mlp.0.weight); '
        'load it with vit_jax.checkpoint.load and a VisionTransformer.'
    )
  raise errors.UserInputError(
      f'not a DiT state dict: none of {DIT_MARKERS} among its keys (first: {sorted(keys)[:4]})'
  )


def reject_in_vit_loader(keys):
  """For the ViT loaders: a clear error when given a DiT state dict (call before converting)."""
  if is_dit(keys):
    raise errors.UserInputError(
        'this is a DiT (diffusion transformer) checkpoint (x_embedder / t_embedder keys), not '
        'a ViT one: generate from it with python -m vit_jax.sample, or load it with '
        'vit_jax.checkpoints.dit_format.load and build vit_jax.models.dit.DiT.'
    )


def _num_heads(width):
  return _STANDARD_HEADS.get(width, max(width // 64, 1))


def config_from_state_dict(sd, class_dropout_prob=0.1):
  """The DiT config a state dict implies (DiT keyword arguments plus in/out channels and
  input_size). The label table has num_classes + 1 rows when class_dropout_prob > 0 (the null
  class); the file cannot tell, so that is assumed as in every released DiT."""
  _require_dit(sd)
  proj = np.shape(sd['x_embedder.proj.weight'])  # [hidden, in_channels, p, p]
  hidden, in_channels, patch = proj[0], proj[1], proj[2]
  depth = len({int(m.group(1)) for k in sd if (m := re.match(r'blocks\.(\d+)\.', k))})
  out_features = np.shape(sd['final_layer.linear.weight'])[0]
  out_channels = out_features // (patch * patch)
  rows = np.shape(sd['y_embedder.embedding_table.weight'])[0]
  config = dict(
      patch_size=int(patch),
      hidden_size=int(hidden),
      depth=depth,
      num_heads=_num_heads(int(hidden)),
      mlp_ratio=np.shape(sd['blocks.0.mlp.fc1.weight'])[0] / hidden if depth else 4.0,
      class_dropout_prob=class_dropout_prob,
      num_classes=int(rows - (class_dropout_prob > 0)),
      learn_sigma=bool(out_channels == 2 * in_channels),
      in_channels=int(in_channels),
      out_channels=int(out_channels),
  )
  if out_channels not in (in_channels, 2 * in_channels):
    raise errors.UserInputError(
        f'final_layer.linear.weight has {out_features} outputs = {patch}x{patch} patches x '
        f'{out_features / patch**2:g} channels, neither in_channels={in_channels} nor twice it'
    )
  if 'pos_embed' in sd:
    side = int(round(np.sqrt(np.shape(sd['pos_embed'])[1])))
    config['input_size'] = side * int(patch)
  return config


MODEL_FIELDS = (
    'num_classes',
    'patch_size',
    'hidden_size',
    'depth',
    'num_heads',
    'mlp_ratio',
    'class_dropout_prob',
    'learn_sigma',
)


def model_kwargs(config):
  """The `DiT(...)` keyword arguments of a config_from_state_dict result."""
  return {k: config[k] for k in MODEL_FIELDS}


def flax_path(key):
  """'blocks.3.attn.qkv.weight' -> ('blocks_3', 'attn', 'qkv', 'kernel') (leaf renamed)."""
  parts = []
  for part in key.split('.')[:-1]:
    if part.isdigit() and parts:
      parts[-1] = f'{parts[-1]}_{part}'
    else:
      parts.append(part)
  leaf = key.split('.')[-1]
  if parts[-1] == 'embedding_table':
    leaf = {'weight': 'embedding'}.get(leaf, leaf)
  else:
    leaf = {'weight': 'kernel'}.get(leaf, leaf)
  return tuple(parts) + (leaf,)


def _to_flax(key, value):
  if key == 'x_embedder.proj.weight':
    return np.transpose(value, (2, 3, 1, 0))  # OIHW -> HWIO
  if key.endswith('.weight') and 'embedding_table' not in key:
    return np.transpose(value)  # Linear [out, in] -> Dense kernel [in, out]
  return value


def _check_pos_embed(sd, hidden):
  pe = np.asarray(sd['pos_embed'], np.float64)
  side = int(round(np.sqrt(pe.shape[1])))
  if pe.shape != (1, side * side, hidden):
    raise errors.UserInputError(f'pos_embed has shape {pe.shape}, not [1, side^2, {hidden}]')
  want = dit_layers.sincos_2d((side, side), hidden)
  if np.abs(pe[0] - want).max() > 1e-5:
    raise errors.UserInputError(
        'pos_embed is not the fixed 2-D sin-cos embedding DiT uses (max difference '
        f'{np.abs(pe[0] - want).max():.3g}); this model computes it, learned ones are not '
        'supported.'
    )


def state_dict_to_params(sd, *, expected=None, learn_sigma=None, scan_layers=False):
  """A DiT state dict {name: array} -> the Flax params tree of `DiT` (float32 numpy).

  `expected`: a params tree (arrays or ShapeDtypeStructs, e.g. from jax.eval_shape of the
  model's init) every converted entry must match in name and shape. `learn_sigma`: what the
  model is built with; a checkpoint trained the other way is named as such.
  """
  _require_dit(sd)
  config = config_from_state_dict(sd)
  if learn_sigma is not None and bool(learn_sigma) != config['learn_sigma']:
    have = 'has' if config['learn_sigma'] else 'has no'
    raise errors.UserInputError(
        f'learn_sigma={learn_sigma} but the checkpoint {have} learned variance '
        f"(final_layer.linear outputs {config['out_channels']} channels for "
        f"{config['in_channels']} input channels); build the model and diffusion with "
        f"learn_sigma={config['learn_sigma']}."
    )
  if 'pos_embed' in sd:
    _check_pos_embed(sd, config['hidden_size'])
  params = {}
  for key, value in sd.items():
    if key == 'pos_embed':
      continue
    path = flax_path(key)
    node = params
    for part in path[:-1]:
      node = node.setdefault(part, {})
    node[path[-1]] = np.asarray(_to_flax(key, np.asarray(value)), np.float32)
  if expected is not None:
    _check_against(params, expected)
  return to_layout(params, scan_layers)


def torch_key(path):
  """('blocks_3', 'attn', 'qkv', 'kernel') -> 'blocks.3.attn.qkv.weight'."""
  parts = [re.sub(r'_(\d+)$', r'.\1', p) for p in path[:-1]]
  leaf = {'kernel': 'weight', 'embedding': 'weight'}.get(path[-1], path[-1])
  return '.'.join(parts + [leaf])


def _check_against(params, expected):
  flat = _flatten(params)
  want = _flatten(to_layout(_unfreeze(expected), False))
  for path in sorted(set(flat) | set(want)):
    key = torch_key(path)
    if path not in want:
      raise errors.UserInputError(
          f'checkpoint entry {key!r} has no place in the model (it '
          f'would be {"/".join(path)}); is it another architecture?'
      )
    if path not in flat:
      raise errors.UserInputError(
          f'checkpoint has no {key!r}; the model expects '
          f'{"/".join(path)} of shape {tuple(want[path].shape)}'
      )
    if tuple(flat[path].shape) != tuple(want[path].shape):
      raise errors.UserInputError(
          f'checkpoint entry {key!r} gives {"/".join(path)} shape {tuple(flat[path].shape)}, '
          f'but the model expects {tuple(want[path].shape)}; build the model the checkpoint '
          'implies (config_from_state_dict).'
      )


def params_to_state_dict(params, grid_size=None):
  """The reverse: Flax DiT params (either layout) -> PyTorch DiT names and layouts; with
  `grid_size` (tokens per side) the frozen `pos_embed` buffer is added."""
  sd = {}
  for path, value in _flatten(to_layout(_unfreeze(params), False)).items():
    key = torch_key(path)
    value = np.asarray(value, np.float32)
    if key == 'x_embedder.proj.weight':
      value = np.transpose(value, (3, 2, 0, 1))
    elif key.endswith('.weight') and 'embedding_table' not in key:
      value = np.transpose(value)
    sd[key] = np.ascontiguousarray(value)
  if grid_size:
    hidden = sd['x_embedder.proj.weight'].shape[0]
    sd['pos_embed'] = dit_layers.sincos_2d((grid_size, grid_size), hidden)[None].astype(np.float32)
  return sd


def _unfreeze(tree):
  return flax.core.unfreeze(tree)


def _flatten(tree, prefix=()):
  out = {}
  for key, value in tree.items():
    if isinstance(value, dict) or hasattr(value, 'items'):
      out.update(_flatten(value, prefix + (key,)))
    else:
      out[prefix + (key,)] = value
  return out


def to_layout(params, scan_layers):
  """`blocks_0..N-1` (file layout) <-> one `blocks` with a leading [N] axis (scan_layers)."""
  params = dict(params)
  stacked = SCANNED_BLOCK in params
  if scan_layers and not stacked:
    indices = sorted(int(m.group(1)) for k in params if (m := re.fullmatch(r'blocks_(\d+)', k)))
    if indices != list(range(len(indices))):
      raise ValueError(f'DiT blocks {indices} are not numbered 0..{len(indices) - 1}')
    blocks = [params.pop(f'blocks_{i}') for i in indices]
    params[SCANNED_BLOCK] = jax.tree.map(lambda *xs: np.stack([np.asarray(x) for x in xs]), *blocks)
  elif not scan_layers and stacked:
    blocks = params.pop(SCANNED_BLOCK)
    depth = jax.tree.leaves(blocks)[0].shape[0]
    for i in range(depth):
      params[f'blocks_{i}'] = jax.tree.map(lambda x, i=i: x[i], blocks)
  return params


def read_state_dict(path):
  """{name: float32 numpy array} of a DiT `.safetensors`, `.npz` or (with torch) `.pt` file,
  local, gs://, https:// or hf:// (a training checkpoint gives its EMA weights)."""
  sd = file_readers.read(paths.local_copy(path))
  return {k: np.asarray(v, np.float32) for k, v in sd.items()}


def load(path, *, expected=None, learn_sigma=None, scan_layers=False):
  """(params, config) of a DiT checkpoint file: see state_dict_to_params and
  config_from_state_dict."""
  sd = read_state_dict(path)
  _require_dit(sd)
  params = state_dict_to_params(
      sd, expected=expected, learn_sigma=learn_sigma, scan_layers=scan_layers
  )
  return params, config_from_state_dict(sd)
