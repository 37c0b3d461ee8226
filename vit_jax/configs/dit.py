"""Diffusion transformers (DiT): `--config=configs/dit.py:<recipe>`, config.objective='diffusion'.

Embedded CPU presets (class-conditional Fashion-MNIST in pixel space, 14x14 grayscale):
  fashion_mnist        pixel tokens (patch 1, 196 tokens): the embedded generation default
  fashion_mnist_p2     the same DiT on 2x2 patches (49 tokens): the PiT paper's comparison
  fid_classifier       the 14x14 classifier whose features the presets' FID uses (shipped as
                       vit_jax/data/fashion_mnist14_classifier.*)
The PiT paper's latent recipes (32x32x4 latents of 256x256 ImageNet, written by
`python -m vit_jax.encode_latents` into ROOT/train and ROOT/validation; pass
`--config.dataset=latents:ROOT`):
  imagenet256_pit_l    DiT-L with patch 1: 1,024 pixel tokens (the paper's PiT-L)
  imagenet256_dit_l2   DiT-L/2 and DiT-XL/2, DiT's baselines
  imagenet256_dit_xl2
Sources: [DiT] Peebles & Xie, "Scalable Diffusion Models with Transformers", ICCV 2023, §4
(AdamW lr 1e-4, no weight decay, batch 256, EMA 0.9999, horizontal flips, 400K steps;
sampling 250 DDPM steps, cfg 1.5 guiding 3 channels); [PiT] Nguyen et al., arXiv:2406.09415,
§4.3 (DiT-L with patch 1 on the same latents, the same recipe).
"""

import ml_collections

from vit_jax.configs import common
from vit_jax.configs import models
from vit_jax.configs import vit

LATENTS_PLACEHOLDER = 'latents:'


def diffusion_fields(**overrides):
  """config.diffusion: the process DiT trains with and how evaluations sample."""
  fields = ml_collections.ConfigDict(
      {
          'steps': 1000,  # diffusion steps of the linear schedule (1e-4 .. 0.02)
          'noise_schedule': 'linear',
          'sampler': 'ddpm',  # 'ddpm' (ancestral) or 'ddim'
          'sample_steps': 250,  # respaced steps for sampling ([DiT]: 250 DDPM)
          'cfg_scale': 1.5,  # classifier-free guidance; 1 samples unguided
          'guide_channels': 3,  # [DiT] guides the first 3 of 4 latent channels; None: all
          'eval_samples_per_class': 10,
          'sample_batch': 64,  # samples per compiled sampling call (a multiple of the
          # data-parallel devices)
          'feature_network': None,  # classifier features for FID and conditional accuracy
          # A diffusers AutoencoderKL folder (local, gs:// or hf://, e.g.
          # hf://stabilityai/sd-vae-ft-ema) whose decoder turns sampled latents into images;
          # None: the run diffuses pixels.
          'vae': None,
      }
  )
  fields.update(overrides)
  return fields


def _small_dit(name, patch, width, depth, heads):
  config = models.dit_config('S', patch)
  config.model_name = name
  config.hidden_size, config.depth, config.num_heads = width, depth, heads
  return config


def _fashion_mnist(model):
  config = common.get_config()
  config.objective = 'diffusion'
  config.dataset = 'fashion_mnist'
  config.model = model
  config.pp.update(
      dict(
          train='train', test='test', crop=14, resize=0, inception_crop=False, flip=True, channels=1
      )
  )
  common.apply_cpu_recipe(config)
  config.eval_flip = False  # flip test-time augmentation is for classifiers
  config.optim = 'adamw'
  config.adam_b1, config.adam_b2 = 0.9, 0.999  # [DiT]: AdamW's defaults
  config.weight_decay = 0.0
  # Measured here: batch 32 runs 2.5x the steps per second of batch 64, and for the same
  # time more, smaller steps gave the better samples (75 % against 53 % conditional accuracy).
  config.base_lr = 2e-3
  config.batch = 32
  config.batch_eval = 1000
  config.total_steps = 3_000
  config.warmup_steps = 100
  config.grad_norm_clip = 1.0
  config.ema_decay = 0.998  # a few thousand steps: 0.9999 would average over too many
  config.eval_every = 0  # the final evaluation only
  config.checkpoint_every = 1_000
  config.progress_every = 100
  # Guidance 3 against 1 / 5 / 8: conditional accuracy 0.52 vs 0.35 / 0.54 / 0.51, FID 14 vs
  # 13 / 24 / 31 (an earlier, shorter run); 25 DDIM steps gave what 50 DDPM steps did.
  config.diffusion = diffusion_fields(
      sampler='ddim',
      sample_steps=25,
      cfg_scale=3.0,
      guide_channels=None,
      eval_samples_per_class=50,
      sample_batch=250,
      feature_network='package:fashion_mnist14_classifier',
  )
  return config


def fashion_mnist():
  """A DiT on pixel tokens of 14x14 Fashion-MNIST: the embedded generation default.

  Command: `python -m vit_jax.main --config=configs/dit.py:fashion_mnist --workdir=DIR`.
  Writes DIR/samples/step_*.png (a row per class) and, in metrics.jsonl, the FID of 500
  samples against the test split in the shipped classifier's features and their conditional
  accuracy (docs/benchmarks.md has the figures; under 10 minutes on a 2-core CPU host).
  """
  return _fashion_mnist(_small_dit('DiT-fmnist/1', 1, 64, 4, 2))


def fashion_mnist_p2():
  """The same DiT on 2x2 patches of the same images (49 tokens): the patch baseline.

  Command: `python -m vit_jax.main --config=configs/dit.py:fashion_mnist_p2 --workdir=DIR`.
  """
  return _fashion_mnist(_small_dit('DiT-fmnist/2', 2, 64, 4, 2))


def fid_classifier():
  """The feature network of the presets' FID: a ViT/2 classifier of 14x14 Fashion-MNIST.

  Command: `python -m vit_jax.main --config=configs/dit.py:fid_classifier --workdir=DIR`,
  then `python -m vit_jax.export DIR --format=npz vit_jax/data/fashion_mnist14_classifier.npz`
  and the JSON beside it (bench/make_fid_classifier.py does all three).
  """
  config = common.get_config()
  config.dataset = 'fashion_mnist'
  config.model = vit.small_vit('ViT-fmnist14/2', 2, 64, 4, 2, 256)
  config.model.posemb = 'sincos2d'
  config.pp.update(
      dict(
          train='train', test='test', crop=14, resize=0, inception_crop=False, flip=True, channels=1
      )
  )
  common.apply_cpu_recipe(config)
  config.total_steps = 4_000
  config.eval_every = 0
  config.checkpoint_every = 1_000
  config.progress_every = 200
  return config


def _imagenet256(model_name):
  """[DiT] §4 on 32x32x4 latents of 256x256 ImageNet (scale factor 0.18215 applied)."""
  config = common.get_config()
  config.objective = 'diffusion'
  # The placeholder the user fills: --config.dataset=latents:ROOT (unset, it is an error
  # naming the encode command). Splits are ROOT/train and ROOT/validation.
  config.dataset = LATENTS_PLACEHOLDER
  config.model = models.MODEL_CONFIGS[model_name].copy_and_resolve_references()
  config.pp.update(
      dict(
          train='train',
          test='validation',
          crop=32,
          resize=0,
          inception_crop=False,
          flip=True,
          channels=4,
      )
  )
  config.dtype = 'bfloat16'
  config.optim = 'adamw'
  config.adam_b1, config.adam_b2 = 0.9, 0.999
  config.weight_decay = 0.0
  config.base_lr = 1e-4
  config.warmup_steps = 0
  config.decay_type = 'linear'
  config.linear_end = 1e-4  # a constant learning rate, as DiT trains
  config.grad_norm_clip = None
  config.batch = config.batch_eval = 256
  config.accum_steps = 1
  config.total_steps = 400_000
  config.ema_decay = 0.9999
  config.eval_every = 50_000
  config.checkpoint_every = 5_000
  config.progress_every = 100
  # [DiT] trains on latents of sd-vae-ft-ema and samples through its decoder.
  config.diffusion = diffusion_fields(vae='hf://stabilityai/sd-vae-ft-ema')
  return config


RECIPES = {
    'fashion_mnist': fashion_mnist,
    'fashion_mnist_p2': fashion_mnist_p2,
    'fid_classifier': fid_classifier,
    'imagenet256_pit_l': lambda: _imagenet256('DiT-L/1'),
    'imagenet256_dit_l2': lambda: _imagenet256('DiT-L/2'),
    'imagenet256_dit_xl2': lambda: _imagenet256('DiT-XL/2'),
}


def get_config(recipe='fashion_mnist'):
  if recipe not in RECIPES:
    raise vit.unknown_name('DiT recipe', recipe, list(RECIPES))
  return RECIPES[recipe]().lock()
