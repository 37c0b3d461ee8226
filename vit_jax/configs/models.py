"""Model configs by name, as in the original `vit_jax/configs/models.py`, plus PiT.

`MODEL_CONFIGS[name]` is a locked ConfigDict whose fields are the keyword arguments of
`vit_jax.models.VisionTransformer` (apart from `num_classes`). `AUGREG_CONFIGS` holds the same
configs under the AugReg file-name spelling (`B_16`, `R26_S_32`, ...).

Locked configs take no new keys, so `transformer_config` also holds the fields that change
compile time and memory but never the numbers (`scan_layers`, `remat`, `attention`) at their
defaults: `--config.model.transformer.scan_layers=True` or
`--config.model.transformer.attention.impl=ring` then works on any of them.
"""

import ml_collections

MODEL_CONFIGS = {}
AUGREG_CONFIGS = {}
# Names the AugReg release has no checkpoints for (as in the original).
_NOT_IN_AUGREG = ('testing', 'testing-unpooled', 'ViT-L_32', 'R50+ViT-B_16', 'ViT-H_14')


def _register(get_config):
  """Records a model config under its `model_name` (and its AugReg spelling)."""
  config = get_config().lock()
  name = config.model_name
  MODEL_CONFIGS[name] = config
  if name not in _NOT_IN_AUGREG and not name.startswith('PiT'):
    AUGREG_CONFIGS[name.replace('ViT-', '').replace('+', '_')] = config
  return get_config


def transformer_config(
    mlp_dim, num_heads, num_layers, dropout_rate=0.0, attention_dropout_rate=0.0
):
  """The `transformer` field: the original's entries, then scan_layers and remat (off)."""
  config = ml_collections.ConfigDict()
  config.mlp_dim = mlp_dim
  config.num_heads = num_heads
  config.num_layers = num_layers
  config.attention_dropout_rate = attention_dropout_rate
  config.dropout_rate = dropout_rate
  config.scan_layers = False  # True: nn.scan over one block, compile time independent of depth
  config.remat = 'none'  # 'full' or 'dots': recompute block activations in the backward pass
  # vit_jax/attention: impl 'auto' is dense (the original's numbers) for short sequences and
  # the platform's fused kernel for long ones; kernel: the sharded schedules' per-device work.
  config.attention = ml_collections.ConfigDict(
      {'impl': 'auto', 'block_size': 512, 'kernel': 'auto'}
  )
  return config


def _vit(name, patch, width, mlp_dim, heads, depth, dropout=0.0):
  """A plain ViT config with the original's field layout."""
  config = ml_collections.ConfigDict()
  config.model_name = name
  config.patches = ml_collections.ConfigDict({'size': (patch, patch)})
  config.hidden_size = width
  config.transformer = transformer_config(mlp_dim, heads, depth, dropout_rate=dropout)
  config.classifier = 'token'
  config.representation_size = None
  return config


def _gap_norep(config, name):
  config.model_name = name
  config.classifier = 'gap'
  config.representation_size = None
  return config


def _hybrid(config, name, patch, num_layers):
  config.model_name = name
  config.patches.size = (patch, patch)
  config.resnet = ml_collections.ConfigDict()
  config.resnet.num_layers = num_layers
  config.resnet.width_factor = 1
  return config


@_register
def get_testing_config():
  """A tiny model for tests."""
  return _vit('testing', 16, 10, 10, 2, 1, dropout=0.1)


@_register
def get_testing_unpooled_config():
  """The testing model returning every token's logits."""
  config = get_testing_config()
  config.model_name = 'testing-unpooled'
  config.classifier = 'unpooled'
  return config


@_register
def get_ti16_config():
  return _vit('ViT-Ti_16', 16, 192, 768, 3, 12)


@_register
def get_s16_config():
  return _vit('ViT-S_16', 16, 384, 1536, 6, 12)


@_register
def get_b16_config():
  return _vit('ViT-B_16', 16, 768, 3072, 12, 12)


@_register
def get_l16_config():
  return _vit('ViT-L_16', 16, 1024, 4096, 16, 24, dropout=0.1)


@_register
def get_h14_config():
  return _vit('ViT-H_14', 14, 1280, 5120, 16, 32, dropout=0.1)


@_register
def get_s16_gap_norep_config():
  return _gap_norep(get_s16_config(), 'ViT-S_16-gap-norep')


@_register
def get_b16_gap_norep_config():
  return _gap_norep(get_b16_config(), 'ViT-B_16-gap-norep')


@_register
def get_b8_config():
  return _vit('ViT-B_8', 8, 768, 3072, 12, 12)


@_register
def get_s32_config():
  return _vit('ViT-S_32', 32, 384, 1536, 6, 12)


@_register
def get_b32_config():
  return _vit('ViT-B_32', 32, 768, 3072, 12, 12)


@_register
def get_l32_config():
  return _vit('ViT-L_32', 32, 1024, 4096, 16, 24)


@_register
def get_s32_gap_norep_config():
  return _gap_norep(get_s32_config(), 'ViT-S_32-gap-norep')


@_register
def get_b32_gap_norep_config():
  return _gap_norep(get_b32_config(), 'ViT-B_32-gap-norep')


@_register
def get_r_ti16_config():
  """ResNet root only (stride-2 conv + stride-2 max-pool, no stages), then 8x8 patches."""
  return _hybrid(get_ti16_config(), 'R+ViT-Ti_16', 8, ())


@_register
def get_r50_b16_config():
  """ResNet-50-like stages (3, 4, 9): /16 overall with 1x1 patches."""
  config = _hybrid(get_b16_config(), 'R50+ViT-B_16', 1, (3, 4, 9))
  config.transformer.dropout_rate = 0.1
  return config


@_register
def get_r26_b32_config():
  return _hybrid(get_b32_config(), 'R26+ViT-B_32', 1, (2, 2, 2, 2))


@_register
def get_r26_s32_config():
  return _hybrid(get_s16_config(), 'R26+ViT-S_32', 1, (2, 2, 2, 2))


@_register
def get_r50_l32_config():
  return _hybrid(get_l16_config(), 'R50+ViT-L_32', 1, (3, 4, 6, 3))


# Pixel Transformers: one token per pixel (1x1 patches), learned position embedding.
@_register
def get_pit_t_config():
  return _vit('PiT-T', 1, 192, 768, 3, 12)


@_register
def get_pit_s_config():
  return _vit('PiT-S', 1, 384, 1536, 6, 12)


@_register
def get_pit_b_config():
  return _vit('PiT-B', 1, 768, 3072, 12, 12)


@_register
def get_pit_l_config():
  return _vit('PiT-L', 1, 1024, 4096, 16, 24)


# Diffusion Transformers (facebookresearch/DiT): `DiT(num_classes=..., **MODEL_CONFIGS[name])`
# from vit_jax/models/dit.py, e.g. 'DiT-XL/2'. Not ViTs: their fields are DiT's keyword
# arguments, they have no AugReg spelling and their names are listed in DIT_NAMES.
DIT_SIZES = {'S': (384, 12, 6), 'B': (768, 12, 12), 'L': (1024, 24, 16), 'XL': (1152, 28, 16)}
DIT_PATCHES = (1, 2, 4, 8)
DIT_NAMES = []


def dit_config(size, patch):
  """DiT-<size>/<patch>: width, depth, heads of DIT_SIZES; the original's defaults otherwise."""
  width, depth, heads = DIT_SIZES[size]
  config = ml_collections.ConfigDict()
  config.model_name = f'DiT-{size}/{patch}'
  config.patch_size = patch
  config.hidden_size = width
  config.depth = depth
  config.num_heads = heads
  config.mlp_ratio = 4.0
  config.class_dropout_prob = 0.1  # > 0 adds the null class (classifier-free guidance)
  config.learn_sigma = True  # output 2 * C channels: noise and variance interpolation
  config.scan_layers = False
  config.remat = 'none'
  config.grads_as_dots = False  # True: the backward written for XLA:CPU (the CPU recipe's)
  config.attention = ml_collections.ConfigDict(
      {'impl': 'auto', 'block_size': 512, 'kernel': 'auto'}
  )
  return config


for _size in DIT_SIZES:
  for _patch in DIT_PATCHES:
    _config = dit_config(_size, _patch).lock()
    MODEL_CONFIGS[_config.model_name] = _config
    DIT_NAMES.append(_config.model_name)
