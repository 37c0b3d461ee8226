"""Encoder blocks one per layer (`encoderblock_N`, the file layout) <-> stacked (scanned model).

Checkpoint files keep one layout, the original's `Transformer/encoderblock_0..N-1`. A model
with `transformer.scan_layers=True` holds the same numbers as `Transformer/encoderblock/...`
with a leading [num_layers] axis. The layout is the model's (vit.py names the scanned block),
so the conversion lives beside it; checkpoint code converts at its boundary with these.
Both directions are exact (stack / index), so they round-trip bitwise.
"""

import re

import jax
import jax.numpy as jnp
import numpy as np

from vit_jax.models.vit import SCANNED_BLOCK

_BLOCK = re.compile(r'encoderblock_(\d+)')


def is_stacked(params):
  """Whether `params` (a VisionTransformer tree) holds its blocks stacked."""
  return SCANNED_BLOCK in (params.get('Transformer') or {})


def is_stacked_path(path):
  """Whether a '/'-joined parameter path lies in a stacked block (a leading layer axis)."""
  return f'/Transformer/{SCANNED_BLOCK}/' in f'/{path}'


def num_layers(params):
  """Encoder depth of a tree in either layout (0 without encoder blocks)."""
  encoder = params.get('Transformer') or {}
  if SCANNED_BLOCK in encoder:
    return int(jax.tree.leaves(encoder[SCANNED_BLOCK])[0].shape[0])
  return sum(1 for k in encoder if _BLOCK.fullmatch(k))


def _stack_leaves(*leaves):
  if all(isinstance(x, np.ndarray) for x in leaves):  # checkpoint files stay on the host
    return np.stack(leaves)
  return jnp.stack(leaves)


def stack(params):
  """`encoderblock_0..N-1` -> one `encoderblock` with a leading [N] axis (other keys kept)."""
  if is_stacked(params) or 'Transformer' not in params:
    return params
  encoder = dict(params['Transformer'])
  indices = sorted(int(m.group(1)) for k in encoder if (m := _BLOCK.fullmatch(k)))
  if not indices:
    return params
  if indices != list(range(len(indices))):
    raise ValueError(
        f'encoder blocks {indices} are not numbered 0..{len(indices) - 1}; ' 'cannot stack them'
    )
  blocks = [encoder.pop(f'encoderblock_{i}') for i in indices]
  structures = {jax.tree.structure(b) for b in blocks}
  if len(structures) > 1:
    raise ValueError('encoder blocks have different parameters; cannot stack them')
  encoder[SCANNED_BLOCK] = jax.tree.map(_stack_leaves, *blocks)
  return dict(params, Transformer=encoder)


def unstack(params):
  """One stacked `encoderblock` -> `encoderblock_0..N-1` (other keys kept)."""
  if not is_stacked(params):
    return params
  encoder = dict(params['Transformer'])
  stacked = encoder.pop(SCANNED_BLOCK)
  for i in range(num_layers(params)):
    encoder[f'encoderblock_{i}'] = jax.tree.map(lambda x, i=i: x[i], stacked)
  return dict(params, Transformer=encoder)


def to_layout(params, scan_layers):
  """`params` in the layout of a model with transformer.scan_layers=`scan_layers`."""
  return stack(params) if scan_layers else unstack(params)
