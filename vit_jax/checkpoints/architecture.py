"""The model a checkpoint implies, read from its parameter shapes alone.

Width, depth, heads (the q kernel is (width, heads, head_dim)), MLP size, patch size, channels,
classifier (`MAPHead_0` -> map, `cls` -> token, else gap), representation size and the hybrid
ResNet stem are all in the shapes of the original layout that every format is converted to.
Not in the shapes: the GELU form and the LayerNorm epsilon (the original's tanh GELU and 1e-6
unless the caller knows better), and which fixed position embedding a checkpoint without a
learned one used (sincos2d, as our PiT presets). A scanned model's tree (stacked
`encoderblock`) reads the same, depth from its leading axis, and implies scan_layers=True.
"""

import re

from vit_jax import errors
from vit_jax.models import layer_stack


def param_shape(params, *keys):
  """Shape of params[keys[0]][keys[1]]... in a nested tree, or None when absent."""
  node = params
  for key in keys:
    if not isinstance(node, dict) or key not in node:
      return None
    node = node[key]
  return tuple(node.shape)


def _stem(params):
  """The `resnet` entry of a hybrid (R+ViT) checkpoint, or None."""
  root = param_shape(params, 'conv_root', 'kernel')
  if root is None:
    return None
  blocks = sorted(int(m.group(1)) for k in params if (m := re.fullmatch(r'block(\d+)', k)))
  units = [sum(1 for k in params[f'block{b}'] if k.startswith('unit')) for b in blocks]
  return {'num_layers': tuple(units), 'width_factor': root[-1] / 64}


def model_config_from_params(params):
  """(model config dict for `VisionTransformer(num_classes=..., **config)`, num_classes)."""
  embedding = param_shape(params, 'embedding', 'kernel')
  blocks = params.get('Transformer', {})
  depth = layer_stack.num_layers(params)
  if embedding is None or not depth:
    raise errors.UserInputError(
        'the checkpoint has no patch embedding or no encoder blocks: it is not a ViT this '
        'library can build a model for; give --model.'
    )
  stacked = layer_stack.is_stacked(params)
  first = layer_stack.SCANNED_BLOCK if stacked else 'encoderblock_0'
  block_shape = lambda *keys: param_shape(blocks, first, *keys)[int(stacked) :]
  width, heads, _ = block_shape('MultiHeadDotProductAttention_0', 'query', 'kernel')
  mlp = block_shape('MlpBlock_0', 'Dense_0', 'kernel')[1]
  classifier = 'map' if 'MAPHead_0' in params else 'token' if 'cls' in params else 'gap'
  pre_logits = param_shape(params, 'pre_logits', 'kernel')
  head = param_shape(params, 'head', 'bias')
  config = {
      'patches': {'size': tuple(embedding[:2])},
      'hidden_size': int(width),
      'transformer': {
          'num_layers': depth,
          'num_heads': int(heads),
          'mlp_dim': int(mlp),
          'dropout_rate': 0.0,
          'attention_dropout_rate': 0.0,
          'scan_layers': stacked,
      },
      'classifier': classifier,
      'representation_size': int(pre_logits[1]) if pre_logits else None,
      'resnet': _stem(params),
      'posemb': 'learn' if 'posembed_input' in blocks else 'sincos2d',
  }
  return config, int(head[0]) if head else 0
