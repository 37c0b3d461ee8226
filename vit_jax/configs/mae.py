"""Masked-autoencoder recipes: `--config=configs/mae.py:<recipe>` (vit_jax/models/mae.py).

Pre-training recipes set `config.objective='mae'`; at the end the run writes
WORKDIR/encoder.npz. Fine-tuning recipes (`*_finetune`) are classification runs: pass that
file as `--config.pretrained_path=.../encoder.npz` (the head is new); without it the same
recipe trains the model from scratch, the baseline.

ImageNet at 28x28 (the PiT paper's MAE setting), PiT-S/B and their ViT/2 baselines:
  pit_s, pit_b, vit_s2, vit_b2                     pre-training
  pit_s_finetune, ..., vit_b2_finetune             fine-tuning
Sources: [PiT] Nguyen et al., "An Image is Worth More Than 16x16 Patches", arXiv:2406.09415,
§4.2 (MAE with pixel tokens at 28x28, following MAE's recipe); [MAE] He et al., "Masked
Autoencoders Are Scalable Vision Learners", CVPR 2022, Table 8 (pre-training), Table 9
(fine-tuning), §4 ablations (decoder). The epochs are MAE's ViT-B numbers (1600 / 100); the
PiT paper's own epoch counts could not be checked offline here, set them with total_steps.
Not implemented, so not applied: MAE fine-tuning's drop path 0.1 and CutMix 1.0 (and its
RandAugment (9, 0.5) runs as vit_jax's 2 layers at magnitude 9).

Fashion-MNIST at 28x28 on this 2-core CPU (784 pixel tokens for PiT, 196 for ViT/2):
  fashion_mnist, fashion_mnist_vit2                pre-training
  fashion_mnist_finetune, fashion_mnist_vit2_finetune
"""

import ml_collections

from vit_jax.configs import common
from vit_jax.configs import models
from vit_jax.configs import pit
from vit_jax.configs import vit

IMAGENET_TRAIN = 1_281_167
_IMAGENET = {'pit_s': 'PiT-S', 'pit_b': 'PiT-B', 'vit_s2': 'PiT-S', 'vit_b2': 'PiT-B'}


def decoder(width, depth, heads, mlp, posemb='sincos2d'):
  return ml_collections.ConfigDict(
      {
          'hidden_size': width,
          'num_layers': depth,
          'num_heads': heads,
          'mlp_dim': mlp,
          'posemb': posemb,
      }
  )


def _model(recipe):
  """The PiT of a recipe, or its ViT/2 baseline (same transformer, 2x2 patches)."""
  if recipe.startswith('fashion_mnist'):
    model = pit.fashion_mnist_pit()
  else:
    model = models.MODEL_CONFIGS[_IMAGENET[recipe]]
  return pit.vit2_baseline(model) if 'vit' in recipe else model


def _steps(config, epochs, train_examples, warmup_epochs):
  per_epoch = train_examples // config.batch
  config.total_steps = epochs * per_epoch
  config.warmup_steps = warmup_epochs * per_epoch
  config.checkpoint_every = per_epoch
  config.eval_every = 10 * per_epoch


def _imagenet(config, recipe, finetune):
  config.dataset = 'imagenet2012'
  config.model = _model(recipe)
  config.pp.update(
      dict(
          train='train',
          test='validation',
          crop=28,
          resize=0,
          flip=True,
          inception_crop=True,
          channels=3,
      )
  )
  config.optim = 'adamw'
  config.accum_steps = 1
  config.weight_decay = 0.05  # [MAE] Tables 8 and 9
  if not finetune:
    config.objective = 'mae'
    config.batch = config.batch_eval = 4096  # [MAE] Table 8
    config.adam_b1, config.adam_b2 = 0.9, 0.95  # [MAE] Table 8
    config.base_lr = 1.5e-4 * config.batch / 256  # [MAE] Table 8: lr = blr * batch / 256
    config.grad_norm_clip = 0.0  # [MAE]: no clipping
    _steps(config, 1600, IMAGENET_TRAIN, 40)  # [MAE] Table 8 (800/1600 epochs, warmup 40)
    # [MAE] §4, Table 1: mask 75 %, decoder 8 blocks of width 512 (16 heads, MLP 4x). [MAE]
    # reports normalised-pixel targets best for 16x16 patches; a pixel token holds only its 3
    # colour values, so PiT predicts plain pixels, as its ViT/2 baseline does here for parity.
    config.mae = ml_collections.ConfigDict(
        {'mask_ratio': 0.75, 'norm_pix_loss': False, 'decoder': decoder(512, 8, 16, 2048)}
    )
  else:
    config.batch = config.batch_eval = 1024  # [MAE] Table 9
    config.adam_b1, config.adam_b2 = 0.9, 0.999  # [MAE] Table 9
    config.base_lr = 1e-3 * config.batch / 256  # [MAE] Table 9: blr 1e-3
    config.label_smoothing = 0.1  # [MAE] Table 9
    config.layer_decay = 0.75  # [MAE] Table 9 (ViT-B)
    config.pp.mixup = 0.8  # [MAE] Table 9
    config.pp.randaugment.update(dict(num_layers=2, magnitude=9))  # [MAE] Table 9: (9, 0.5)
    _steps(config, 100, IMAGENET_TRAIN, 5)  # [MAE] Table 9: 100 epochs (B), warmup 5


def _fashion_mnist(config, recipe, finetune):
  """Sized for 2 CPU cores: a few minutes per run (README: MAE on Fashion-MNIST)."""
  config.dataset = 'fashion_mnist'
  config.model = _model(recipe)
  config.pp.update(
      dict(
          train='train', test='test', crop=28, resize=0, inception_crop=False, flip=True, channels=1
      )
  )
  common.apply_cpu_recipe(config)  # AdamW lr 2e-3, wd 0.05, one CPU device per core
  config.batch = 64
  config.progress_every = 50
  config.eval_every = 0  # the final eval only
  # About 3-6 minutes per run here (a PiT step at 784 tokens costs ~8x a ViT/2 step at 196).
  pretrain_steps, finetune_steps = (300, 150) if recipe == 'fashion_mnist' else (1_500, 750)
  config.total_steps = finetune_steps if finetune else pretrain_steps
  config.warmup_steps = config.total_steps // 10
  if not finetune:
    config.objective = 'mae'
    config.eval_flip = False  # a classifier's test-time augmentation; MAE evaluates the loss
    config.adam_b2 = 0.95
    # One narrow decoder block: the decoder sees every token (784 for PiT). A 1-channel
    # pixel token has one value, so its normalised target would be 0: plain pixels.
    config.mae = ml_collections.ConfigDict(
        {'mask_ratio': 0.75, 'norm_pix_loss': False, 'decoder': decoder(32, 1, 1, 64)}
    )
  else:
    config.adam_b2 = 0.999


def get_config(recipe='fashion_mnist'):
  config = common.get_config()
  finetune = recipe.endswith('_finetune')
  base = recipe[: -len('_finetune')] if finetune else recipe
  if base in _IMAGENET:
    _imagenet(config, base, finetune)
  elif base in ('fashion_mnist', 'fashion_mnist_vit2'):
    _fashion_mnist(config, base, finetune)
  else:
    names = sorted(_IMAGENET) + ['fashion_mnist', 'fashion_mnist_vit2']
    raise vit.unknown_name('MAE recipe', recipe, names + [n + '_finetune' for n in names])
  return config.lock()
