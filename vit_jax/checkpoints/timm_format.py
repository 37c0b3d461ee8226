"""timm ViT state-dict names <-> vit_jax parameter paths (plain ViTs and ResNetV2 hybrids).

timm stores PyTorch layouts: Linear weights [out, in], conv weights OIHW, a fused qkv Linear
[3*D, D]. Ours are Flax layouts: Dense kernels (in, out), conv kernels HWIO, attention q/k/v
kernels (D, heads, D/heads) and out kernel (heads, D/heads, D). Both directions are exact
reshapes/transposes, so weights round-trip bitwise.
"""

import re

import numpy as np

from vit_jax import errors

# Widths of the standard ViTs -> heads (timm does not store the head count).
_STANDARD_HEADS = {192: 3, 384: 6, 768: 12, 1024: 16, 1280: 16, 1408: 16, 1664: 16}
_UNSUPPORTED = (
    'fc_norm.',
    '.ls1.',
    '.ls2.',
    'attn_pool.',
    'reg_token',
    'dist_token',
    'norm_pre.',
    '.q_norm.',
    '.k_norm.',
)


def is_timm(flat):
  return any(k.startswith(('patch_embed.', 'blocks.', 'cls_token', 'pos_embed')) for k in flat)


def default_num_heads(width):
  return _STANDARD_HEADS.get(width, max(width // 64, 1))


def _conv_to_flax(w):
  return np.transpose(w, (2, 3, 1, 0))  # OIHW -> HWIO


def _conv_to_torch(w):
  return np.transpose(w, (3, 2, 0, 1))  # HWIO -> OIHW


# (timm regex, our path template, kind). Kinds say how the tensor is laid out.
_BACKBONE_RULES = [
    (r'patch_embed\.backbone\.stem\.conv\.weight', 'conv_root/kernel', 'conv'),
    (r'patch_embed\.backbone\.stem\.norm\.(weight|bias)', 'gn_root/{norm}', 'vec'),
    (
        r'patch_embed\.backbone\.stages\.(\d+)\.blocks\.(\d+)\.conv(\d)\.weight',
        'block{s}/unit{b}/conv{c}/kernel',
        'conv',
    ),
    (
        r'patch_embed\.backbone\.stages\.(\d+)\.blocks\.(\d+)\.norm(\d)\.(weight|bias)',
        'block{s}/unit{b}/gn{c}/{norm}',
        'vec',
    ),
    (
        r'patch_embed\.backbone\.stages\.(\d+)\.blocks\.(\d+)\.downsample\.conv\.weight',
        'block{s}/unit{b}/conv_proj/kernel',
        'conv',
    ),
    (
        r'patch_embed\.backbone\.stages\.(\d+)\.blocks\.(\d+)\.downsample\.norm\.(weight|bias)',
        'block{s}/unit{b}/gn_proj/{norm}',
        'vec',
    ),
]
_NORM_NAMES = {'weight': 'scale', 'bias': 'bias'}


def _backbone_key(key):
  """Maps a timm ResNetV2 stem key to (our path, kind), or None."""
  for pattern, template, kind in _BACKBONE_RULES:
    m = re.fullmatch(pattern, key)
    if not m:
      continue
    g = m.groups()
    fields = {}
    if template.startswith('block'):
      fields.update(s=int(g[0]) + 1, b=int(g[1]) + 1)
      if '{c}' in template:
        fields['c'] = g[2]
    if '{norm}' in template:
      fields['norm'] = _NORM_NAMES[g[-1]]
    return template.format(**fields), kind
  return None


def timm_to_flat(sd, num_heads=None):
  """timm state dict (name -> numpy) -> our flat {'a/b/c': array} in the original layout."""
  bad = sorted(k for k in sd if any(u in k for u in _UNSUPPORTED) or k.startswith(_UNSUPPORTED))
  if bad:
    raise errors.UserInputError(
        f'timm checkpoint has parts the original ViT does not: {bad[:4]} '
        '(fc_norm / LayerScale / registers / distillation / qk-norm models are '
        'different architectures and cannot be loaded into VisionTransformer).'
    )
  width = sd['patch_embed.proj.weight'].shape[0]
  heads = num_heads or default_num_heads(width)
  if width % heads:
    raise errors.UserInputError(f'num_heads={heads} does not divide the checkpoint width {width}')
  hd = width // heads
  out = {}
  for key, w in sd.items():
    w = np.asarray(w)
    block = re.fullmatch(r'blocks\.(\d+)\.(.+)', key)
    if key == 'patch_embed.proj.weight':
      out['embedding/kernel'] = _conv_to_flax(w)
    elif key == 'patch_embed.proj.bias':
      out['embedding/bias'] = w
    elif key == 'cls_token':
      out['cls'] = w
    elif key == 'pos_embed':
      out['Transformer/posembed_input/pos_embedding'] = w
    elif key in ('norm.weight', 'norm.bias'):
      out['Transformer/encoder_norm/' + _NORM_NAMES[key.split('.')[1]]] = w
    elif key in ('head.weight', 'head.bias'):
      out['head/' + ('kernel' if key.endswith('weight') else 'bias')] = w.T if w.ndim == 2 else w
    elif key in ('pre_logits.fc.weight', 'pre_logits.fc.bias'):
      out['pre_logits/' + ('kernel' if key.endswith('weight') else 'bias')] = (
          w.T if w.ndim == 2 else w
      )
    elif block:
      prefix = f'Transformer/encoderblock_{block.group(1)}/'
      try:
        out.update(_block_to_flat(prefix, block.group(2), w, heads, hd))
      except errors.UserInputError:
        raise
      except (ValueError, IndexError) as e:  # a reshape of a tensor of the wrong size
        raise errors.UserInputError(
            f'timm entry {key!r} has shape {tuple(w.shape)}, which does not fit a ViT of '
            f'width {width} with {heads} heads ({e}); the file is damaged or not a plain '
            'ViT.'
        ) from e
    elif _backbone_key(key):
      path, kind = _backbone_key(key)
      out[path] = _conv_to_flax(w) if kind == 'conv' else w
    else:
      raise errors.UserInputError(
          f'unknown timm key {key!r} (shape {w.shape}): not a ViT checkpoint ' 'this loader knows'
      )
  return out


def _block_to_flat(prefix, name, w, heads, hd):
  attn = prefix + 'MultiHeadDotProductAttention_0/'
  mlp = prefix + 'MlpBlock_0/'
  width = heads * hd
  if name in ('norm1.weight', 'norm1.bias', 'norm2.weight', 'norm2.bias'):
    ln = 'LayerNorm_0/' if name.startswith('norm1') else 'LayerNorm_1/'
    return {prefix + ln + _NORM_NAMES[name.split('.')[1]]: w}
  if name == 'attn.qkv.weight':  # [3D, D]
    return {
        attn + f'{n}/kernel': w[i * width : (i + 1) * width].T.reshape(width, heads, hd)
        for i, n in enumerate(('query', 'key', 'value'))
    }
  if name == 'attn.qkv.bias':
    return {
        attn + f'{n}/bias': w[i * width : (i + 1) * width].reshape(heads, hd)
        for i, n in enumerate(('query', 'key', 'value'))
    }
  if name == 'attn.proj.weight':
    return {attn + 'out/kernel': w.T.reshape(heads, hd, width)}
  if name == 'attn.proj.bias':
    return {attn + 'out/bias': w}
  fc = re.fullmatch(r'mlp\.fc([12])\.(weight|bias)', name)
  if fc:
    dense = mlp + f'Dense_{int(fc.group(1)) - 1}/'
    return {
        dense + ('kernel' if fc.group(2) == 'weight' else 'bias'): w.T
        if fc.group(2) == 'weight'
        else w
    }
  raise errors.UserInputError(f'unknown timm block key {name!r} (shape {w.shape})')


def flat_to_timm(flat):
  """Our flat {'a/b/c': array} -> timm state dict names and layouts (inverse of above)."""
  sd = {}
  inverse_backbone = {}
  for key, w in flat.items():
    w = np.asarray(w)
    parts = key.split('/')
    if key == 'embedding/kernel':
      sd['patch_embed.proj.weight'] = _conv_to_torch(w)
    elif key == 'embedding/bias':
      sd['patch_embed.proj.bias'] = w
    elif key == 'cls':
      sd['cls_token'] = w
    elif key == 'Transformer/posembed_input/pos_embedding':
      sd['pos_embed'] = w
    elif key.startswith('Transformer/encoder_norm/'):
      sd['norm.' + ('weight' if parts[-1] == 'scale' else 'bias')] = w
    elif parts[0] in ('head', 'pre_logits'):
      name = 'head.' if parts[0] == 'head' else 'pre_logits.fc.'
      sd[name + ('weight' if parts[-1] == 'kernel' else 'bias')] = (
          w.T if parts[-1] == 'kernel' else w
      )
    elif key.startswith('Transformer/encoderblock_'):
      _flat_block_to_timm(sd, parts, w)
    else:
      inverse_backbone[key] = w
  if inverse_backbone:
    sd.update(_backbone_to_timm(inverse_backbone))
  for i in range(len(sd)):  # fuse q, k, v back into one Linear
    q = sd.pop(f'blocks.{i}.attn.q.weight', None)
    if q is None:
      continue
    k, v = sd.pop(f'blocks.{i}.attn.k.weight'), sd.pop(f'blocks.{i}.attn.v.weight')
    sd[f'blocks.{i}.attn.qkv.weight'] = np.concatenate([q, k, v], 0)
    qb, kb, vb = (sd.pop(f'blocks.{i}.attn.{n}.bias') for n in 'qkv')
    sd[f'blocks.{i}.attn.qkv.bias'] = np.concatenate([qb, kb, vb], 0)
  return sd


def _flat_block_to_timm(sd, parts, w):
  i = parts[1].split('_')[1]
  layer, leaf = parts[2], parts[-1]
  torch_leaf = {'scale': 'weight', 'kernel': 'weight', 'bias': 'bias'}[leaf]
  if layer in ('LayerNorm_0', 'LayerNorm_1'):
    sd[f'blocks.{i}.norm{int(layer[-1]) + 1}.{torch_leaf}'] = w
  elif layer == 'MultiHeadDotProductAttention_0':
    proj = parts[3]
    if proj == 'out':
      sd[f'blocks.{i}.attn.proj.{torch_leaf}'] = (
          w.reshape(-1, w.shape[-1]).T if leaf == 'kernel' else w
      )
    else:
      short = {'query': 'q', 'key': 'k', 'value': 'v'}[proj]
      sd[f'blocks.{i}.attn.{short}.{torch_leaf}'] = (
          w.reshape(w.shape[0], -1).T if leaf == 'kernel' else w.reshape(-1)
      )
  elif layer == 'MlpBlock_0':
    fc = int(parts[3].split('_')[1]) + 1
    sd[f'blocks.{i}.mlp.fc{fc}.{torch_leaf}'] = w.T if leaf == 'kernel' else w
  else:
    raise ValueError(f'cannot export {"/".join(parts)} to timm names')


def _backbone_to_timm(flat):
  """Hybrid stem paths -> timm ResNetV2 names (inverse of _backbone_key)."""
  forward = {}
  for s in range(1, 5):
    for b in range(1, 17):
      for c in '123':
        for leaf, torch_leaf in (('scale', 'weight'), ('bias', 'bias')):
          forward[f'block{s}/unit{b}/gn{c}/{leaf}'] = (
              f'patch_embed.backbone.stages.{s - 1}.blocks.{b - 1}.norm{c}.{torch_leaf}'
          )
        forward[f'block{s}/unit{b}/conv{c}/kernel'] = (
            f'patch_embed.backbone.stages.{s - 1}.blocks.{b - 1}.conv{c}.weight'
        )
      forward[f'block{s}/unit{b}/conv_proj/kernel'] = (
          f'patch_embed.backbone.stages.{s - 1}.blocks.{b - 1}.downsample.conv.weight'
      )
      for leaf, torch_leaf in (('scale', 'weight'), ('bias', 'bias')):
        forward[f'block{s}/unit{b}/gn_proj/{leaf}'] = (
            f'patch_embed.backbone.stages.{s - 1}.blocks.{b - 1}.downsample.norm.{torch_leaf}'
        )
  forward['conv_root/kernel'] = 'patch_embed.backbone.stem.conv.weight'
  forward['gn_root/scale'] = 'patch_embed.backbone.stem.norm.weight'
  forward['gn_root/bias'] = 'patch_embed.backbone.stem.norm.bias'
  sd = {}
  for key, w in flat.items():
    if key not in forward:
      raise ValueError(f'cannot export {key!r} to timm names')
    sd[forward[key]] = _conv_to_torch(w) if key.endswith('/kernel') else w
  return sd
