"""Shared defaults of every training config, and the named CPU recipe of the embedded presets.

The fields, their defaults, types, ranges and docs are declared once in `schema.py`; the
recipes (`vit.py`, `pit.py`, `mae.py`, `augreg.py`) start from `get_config()` and fill it in.
"""

from vit_jax.configs import schema


def get_config():
  """Every field at its default: the original's fine-tuning setup (SGD + momentum, warmup
  then cosine decay)."""
  return schema.defaults()


def apply_cpu_recipe(config):
  """The from-scratch recipe of the embedded CPU presets (Fashion-MNIST on a 2-core host).

  Speed settings for XLA:CPU, which only these presets may use: one data-parallel device per
  core (`vit_jax/runtime/host_setup.py`), the train split kept on the devices
  (`vit_jax/datasets/device_input.py`), and the backward written for XLA:CPU
  (`vit_jax/models/cpu_backward_layers.py`; TPUs and GPUs fuse what it replaces). Then AdamW
  from scratch, sized for small grayscale datasets, with flip test-time augmentation.
  """
  config.cpu_devices = -1
  config.pp.on_device = True
  config.eval_flip = config.pp.flip
  if config.model.get('transformer') is not None:
    config.model.transformer.grads_as_dots = True
  elif 'grads_as_dots' in config.model:  # a DiT
    config.model.grads_as_dots = True
  config.optim = 'adamw'
  config.adam_b2 = 0.95
  config.weight_decay = 0.05
  config.accum_steps = 1
  config.batch = 128
  config.batch_eval = 1000
  config.base_lr = 2e-3
  config.warmup_steps = 200
  config.eval_every = 500
  config.checkpoint_every = 500
