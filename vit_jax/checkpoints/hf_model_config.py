"""Hugging Face ViT `config.json` <-> vit_jax model configs (both directions).

`from_hf` reads what `transformers.ViTConfig` reads; `to_hf` writes a config that
`ViTForImageClassification.from_pretrained` builds exactly our model from, or says why
that model has no Hugging Face counterpart.
"""

from typing import NamedTuple

import flax
import numpy as np

from vit_jax import errors
from vit_jax.checkpoints import architecture

POSEMB = 'Transformer/posembed_input/pos_embedding'
EXACT_GELU = ('gelu', 'gelu_python')  # erf
TANH_GELU = ('gelu_pytorch_tanh', 'gelu_new', 'gelu_fast')  # the same tanh formula


class HfConfig(NamedTuple):
  """A config.json in vit_jax terms.

  `VisionTransformer(num_classes=num_classes, **model_config)` is the model; `class_names`
  (id2label in index order) is None without a classifier; `image_size` is (h, w).
  """

  model_config: dict
  num_classes: int
  class_names: list | None
  image_size: tuple
  num_channels: int


def check_vit(config, where='config.json'):
  model_type = config.get('model_type', 'vit')
  if model_type != 'vit':
    raise errors.UserInputError(
        f'{where}: model_type {model_type!r} is not a plain ViT (model_type "vit"); it is a '
        'different architecture that VisionTransformer cannot load.'
    )


def _pair(value, name):
  value = tuple(value) if isinstance(value, (list, tuple)) else (value, value)
  if len(value) != 2 or not all(isinstance(v, int) and v > 0 for v in value):
    raise errors.UserInputError(f'config.json: {name}={value!r} is not a positive size')
  return value


def _class_names(config):
  id2label = config.get('id2label')
  if not id2label:
    return [f'LABEL_{i}' for i in range(config.get('num_labels', 2))]  # transformers' default
  names = {int(k): v for k, v in id2label.items()}
  if sorted(names) != list(range(len(names))):
    raise errors.UserInputError(
        f'config.json: id2label keys {sorted(names)[:8]} are not ' f'0..{len(names) - 1}'
    )
  return [names[i] for i in range(len(names))]


def from_hf(config, params=None):
  """config.json (dict) -> HfConfig. `params` (as loaded) settles head and pooler exactly.

  Without `params`, `architectures` decides: ViTModel has a pooler and no classifier, any
  other (ViTForImageClassification) a classifier and no pooler. A pooler without classifier
  becomes `representation_size` (pre_logits: Dense + tanh) with num_classes 0, so the model
  returns the pooler output; next to a classifier it is unused (and not loaded).
  """
  check_vit(config)
  act = config.get('hidden_act', 'gelu')
  if act not in EXACT_GELU + TANH_GELU:
    raise errors.UserInputError(
        f'config.json: hidden_act={act!r} is not supported; VisionTransformer has exact GELU '
        f'({", ".join(EXACT_GELU)}) and tanh GELU ({", ".join(TANH_GELU)}).'
    )
  if params is not None:
    head = architecture.param_shape(params, 'head', 'bias')
    pooler = architecture.param_shape(params, 'pre_logits', 'bias')
    has_head, has_pooler = head is not None, pooler is not None
  else:
    archs = config.get('architectures') or []
    has_head, has_pooler = 'ViTModel' not in archs, 'ViTModel' in archs
  width = config.get('hidden_size', 768)
  representation_size = None
  if has_pooler and not has_head:
    if config.get('pooler_act', 'tanh') != 'tanh':
      raise errors.UserInputError(
          f'config.json: pooler_act={config["pooler_act"]!r}; only a '
          "tanh pooler is VisionTransformer's pre_logits."
      )
    representation_size = (
        int(pooler[0]) if params is not None else config.get('pooler_output_size') or width
    )
  num_classes, class_names = 0, None
  if has_head:
    class_names = _class_names(config)
    num_classes = len(class_names)
    if params is not None and head[0] != num_classes:
      raise errors.UserInputError(
          f'config.json: id2label has {num_classes} labels but the '
          f'classifier has {head[0]} outputs'
      )
  model_config = {
      'patches': {'size': _pair(config.get('patch_size', 16), 'patch_size')},
      'hidden_size': width,
      'transformer': {
          'num_layers': config.get('num_hidden_layers', 12),
          'mlp_dim': config.get('intermediate_size', 3072),
          'num_heads': config.get('num_attention_heads', 12),
          'dropout_rate': config.get('hidden_dropout_prob', 0.0),
          'attention_dropout_rate': config.get('attention_probs_dropout_prob', 0.0),
          'gelu_approximate': act in TANH_GELU,
          'layer_norm_epsilon': config.get('layer_norm_eps', 1e-12),
      },
      'classifier': 'token',
      'representation_size': representation_size,
  }
  return HfConfig(
      model_config,
      num_classes,
      class_names,
      _pair(config.get('image_size', 224), 'image_size'),
      config.get('num_channels', 3),
  )


def _unsupported(model_config, flat):
  """Why ViTForImageClassification cannot represent this model, or None."""
  representation_size = model_config.get('representation_size')
  if representation_size is not None or 'pre_logits/kernel' in flat:
    return (
        f'it has a pre_logits layer (representation_size={representation_size}), which '
        'ViTForImageClassification lacks; fine-tune with representation_size=None'
    )
  if model_config.get('classifier', 'token') != 'token':
    return (
        f'classifier={model_config.get("classifier")!r}; ViTForImageClassification '
        "classifies the class token (classifier='token')"
    )
  if model_config.get('resnet') is not None or 'conv_root/kernel' in flat:
    return 'it is a ResNet hybrid; ViTForImageClassification has no ResNet stem'
  if model_config.get('posemb', 'learn') != 'learn' or POSEMB not in flat:
    return (
        f'posemb={model_config.get("posemb", "learn")!r}; ViTForImageClassification '
        "has learned position embeddings (posemb='learn')"
    )
  if 'head/kernel' not in flat:
    return 'it has no classification head (num_classes=0)'
  kernel = flat['embedding/kernel'].shape
  if kernel[0] != kernel[1]:
    return f'its patches are not square ({kernel[0]}x{kernel[1]})'
  return None


def to_hf(flat, model_config, class_names=None, image_size=None):
  """Our flat params + model config -> a ViTForImageClassification config.json dict.

  Sizes come from the parameters; `image_size` defaults to the square position grid times
  the patch size.
  """
  why = _unsupported(model_config, flat)
  if why:
    raise errors.UserInputError(f'cannot export to a Hugging Face ViT: {why}.')
  t = dict(model_config.get('transformer') or {})
  patch, _, channels, width = flat['embedding/kernel'].shape
  tokens = flat[POSEMB].shape[1] - 1
  if image_size is None:
    side = int(round(np.sqrt(tokens)))
    if side * side != tokens:
      raise errors.UserInputError(
          f'{tokens} position tokens are not a square grid; pass ' 'image_size=(h, w)'
      )
    image_size = side * patch
  h, w = _pair(image_size, 'image_size')
  if h % patch or w % patch or (h // patch) * (w // patch) != tokens:
    raise errors.UserInputError(
        f'image_size={image_size} with patch {patch} does not give the '
        f'{tokens} position tokens of the model'
    )
  num_classes = flat['head/bias'].shape[0]
  names = (
      [f'LABEL_{i}' for i in range(num_classes)]
      if class_names is None
      else [str(n) for n in class_names]
  )
  if len(names) != num_classes:
    raise errors.UserInputError(
        f'{len(names)} class_names for a head with {num_classes} ' 'classes'
    )
  arch, _ = architecture.model_config_from_params(flax.traverse_util.unflatten_dict(flat, sep='/'))
  return {
      'architectures': ['ViTForImageClassification'],
      'model_type': 'vit',
      'hidden_size': int(width),
      'num_hidden_layers': arch['transformer']['num_layers'],
      'num_attention_heads': arch['transformer']['num_heads'],
      'intermediate_size': arch['transformer']['mlp_dim'],
      'hidden_act': 'gelu_pytorch_tanh' if t.get('gelu_approximate', True) else 'gelu',
      'hidden_dropout_prob': float(t.get('dropout_rate', 0.0)),
      'attention_probs_dropout_prob': float(t.get('attention_dropout_rate', 0.0)),
      'initializer_range': 0.02,
      'layer_norm_eps': float(t.get('layer_norm_epsilon', 1e-6)),
      'image_size': h if h == w else [h, w],
      'patch_size': int(patch),
      'num_channels': int(channels),
      'qkv_bias': True,
      'encoder_stride': int(patch),
      'pooler_output_size': int(width),
      'pooler_act': 'tanh',
      'id2label': {str(i): name for i, name in enumerate(names)},
      'label2id': {name: i for i, name in enumerate(names)},
      'torch_dtype': 'float32',
  }
