"""Fine-tuning / training ViT: `--config=configs/vit.py:<model>,<dataset>`, e.g. `b16,cifar10`.

<model> is a getter of configs/models.py without `get_`/`_config` (ti16, s16, b16, l16, h14,
b8, s32, b32, l32, r50_b16, testing, ...) or one of SMALL_MODELS; <dataset> is a key of
DATASET_PRESETS, which set the data fields and the original's step count for that dataset,
nothing about the hardware. `vit4,fashion_mnist` is the embedded CPU preset (PRESETS).
"""

import difflib

import ml_collections

from vit_jax import errors
from vit_jax.configs import common
from vit_jax.configs import models

DATASET_PRESETS = {
    'cifar10': dict(total_steps=10_000, pp=dict(train='train[:98%]', test='test', crop=384)),
    'cifar100': dict(total_steps=10_000, pp=dict(train='train[:98%]', test='test', crop=384)),
    'imagenet2012': dict(
        total_steps=20_000, pp=dict(train='train[:99%]', test='validation', crop=384)
    ),
    'oxford_iiit_pet': dict(total_steps=500, pp=dict(train='train[:90%]', test='test', crop=384)),
    'oxford_flowers102': dict(total_steps=500, pp=dict(train='train[:90%]', test='test', crop=384)),
    'mnist': dict(
        total_steps=2_000, pp=dict(crop=28, channels=1, inception_crop=False, flip=False)
    ),
    'fashion_mnist': dict(
        total_steps=2_000, pp=dict(crop=28, channels=1, inception_crop=False, flip=True)
    ),
}


def unknown_name(what, name, choices):
  """The error for a name that is not one of `choices`, with the closest one."""
  close = difflib.get_close_matches(name, choices, n=1, cutoff=0.5)
  hint = f"did you mean '{close[0]}'? " if close else ''
  return errors.UserInputError(
      f'unknown {what} {name!r}; {hint}the choices are ' f'{", ".join(sorted(choices))}'
  )


def small_vit(name, patch, width, depth, heads, mlp):
  config = ml_collections.ConfigDict()
  config.model_name = name
  config.patches = ml_collections.ConfigDict({'size': (patch, patch)})
  config.hidden_size = width
  config.transformer = models.transformer_config(mlp, heads, depth)
  config.classifier = 'gap'
  config.representation_size = None
  config.posemb = 'learn'  # or 'sincos2d' / 'none'
  return config


def _vit4():
  # Width 64 rather than 96 runs ~1.6x the examples/s on the 2-core CPU: more epochs in the
  # same time, which this under-fitting model needs.
  config = small_vit('ViT-4x4-small', 4, 64, 4, 2, 256)
  config.posemb = 'sincos2d'
  return config


# Small ViTs trained from scratch on 28x28 images (4x4 patches: 49 tokens).
SMALL_MODELS = {'vit4': _vit4}


def _model_names():
  return sorted(SMALL_MODELS) + sorted(
      n[len('get_') : -len('_config')]
      for n in dir(models)
      if n.startswith('get_') and n.endswith('_config')
  )


def model_config(name):
  if name in SMALL_MODELS:
    return SMALL_MODELS[name]()
  getter = getattr(models, f'get_{name}_config', None)
  if getter is None:
    raise unknown_name('model', name, _model_names())
  return getter()


def apply_dataset_preset(config, dataset):
  """Sets dataset, its pp fields and total_steps; no hardware settings."""
  if dataset not in DATASET_PRESETS:
    raise unknown_name('dataset preset', dataset, list(DATASET_PRESETS))
  config.dataset = dataset
  preset = DATASET_PRESETS[dataset]
  config.total_steps = preset['total_steps']
  config.pp.update(preset['pp'])


def model_and_dataset(model, dataset):
  """The original's recipe: a model fine-tuned (or trained) on a dataset preset."""
  config = common.get_config()
  config.model = model_config(model)
  apply_dataset_preset(config, dataset)
  return config


def vit4_fashion_mnist():
  """ViT/4 from scratch on Fashion-MNIST on a CPU host: the embedded ViT preset.

  Command: `python -m vit_jax.main --config=configs/vit.py:vit4,fashion_mnist --workdir=DIR`.
  Expected: about 90.2 % test accuracy (flip TTA) in about 4.5 minutes on a 2-core CPU host
  (docs/benchmarks.md). Patch dropout (12 of 49 tokens) for the first 4,500 of 6,000 steps,
  each about 3x cheaper than a full step.
  """
  config = model_and_dataset('vit4', 'fashion_mnist')
  common.apply_cpu_recipe(config)
  config.total_steps = 6_000
  config.patch_dropout.rate = 0.75
  config.patch_dropout.steps = 4_500
  config.eval_every = 0  # the final eval only: the time budget goes to training
  config.checkpoint_every = 1_000
  config.progress_every = 100
  return config


# Whole recipes by their config string, before the generic <model>,<dataset> form.
PRESETS = {'vit4,fashion_mnist': vit4_fashion_mnist}


def get_config(model_and_dataset_arg='b16,cifar10'):
  if model_and_dataset_arg in PRESETS:
    return PRESETS[model_and_dataset_arg]().lock()
  model, sep, dataset = model_and_dataset_arg.partition(',')
  if not sep or not model or not dataset:
    raise errors.UserInputError(
        f'configs/vit.py:{model_and_dataset_arg} is not <model>,<dataset>, e.g. '
        f'configs/vit.py:b16,cifar10 (presets: {", ".join(PRESETS)})'
    )
  return model_and_dataset(model, dataset).lock()
