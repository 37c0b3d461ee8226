"""validate(config, mesh): every config error found before anything is compiled.

A bad value otherwise surfaces late and far from its cause: `keep_checkpoints=0` deletes the
final checkpoint, `progress_every=0` is a ZeroDivisionError after compiling, `dtype='bf16'`
a numpy TypeError. Each error is an `errors.UserInputError` naming the field, the value and
the fix. The optimizer's own checks (vit_jax/training/optim.py) run here too, so they also
come first.
"""

import dataclasses
import difflib

from vit_jax import attention
from vit_jax import errors
from vit_jax import objectives
from vit_jax import paths
from vit_jax.configs import dit as dit_configs
from vit_jax.configs import field_checks
from vit_jax.configs import schema
from vit_jax.diffusion import guidance
from vit_jax.diffusion import schedule as diffusion_schedule
from vit_jax.evaluation import classifier_features
from vit_jax.models import dit
from vit_jax.models import resnet
from vit_jax.models import vit
from vit_jax.objectives import diffusion as diffusion_objective
from vit_jax.runtime import partitioning
from vit_jax.training import optim


def _check_color(config):
  """The MoCo-v3 photometric ops act on images: saturation, hue and grayscale on RGB only,
  none of them on the 4-channel latents of a diffusion run."""
  pp, jitter = config.pp, config.pp.color_jitter
  ops = [
      ('pp.color_jitter.saturation', jitter.saturation, 3),
      ('pp.color_jitter.hue', jitter.hue, 3),
      ('pp.grayscale_prob', pp.grayscale_prob, 3),
      ('pp.color_jitter.brightness', jitter.brightness, 1),
      ('pp.color_jitter.contrast', jitter.contrast, 1),
      ('pp.blur_prob', pp.blur_prob, 1),
      ('pp.solarize_prob', pp.solarize_prob, 1),
  ]
  for field, value, fewest in ops:
    if value and (pp.channels < fewest or pp.channels > 3):
      raise field_checks.error(
          field,
          value,
          f"acts on {'RGB ' if fewest == 3 else ''}images in [0, 255], not the "
          f'{pp.channels}-channel inputs of config.pp.channels={pp.channels}; set it to 0'
          + (' or config.pp.channels=3' if pp.channels == 1 else ''),
      )


def _check_optimization(config):
  optim.make_optimizer(config)  # checks that relate fields (warmup, momentum, betas, decay)


def _fields(module_class, set_by_caller):
  return sorted(
      {f.name for f in dataclasses.fields(module_class)} - {'parent', 'name'} - set(set_by_caller)
  )


# Keyword arguments the caller passes itself, so a config entry for them would clash.
_SET_BY_TRAIN = {
    'num_classes': 'the dataset',
    'dtype': 'config.dtype',
    'param_dtype': 'config.param_dtype',
}
_SET_BY_MODEL = {
    'posemb': 'config.model.posemb',
    'dtype': 'config.dtype',
    'param_dtype': 'config.param_dtype',
    'sow_attention_weights': 'config.model.sow_attention_weights',
}


def _check_model(config):
  """config.model: known fields only, and valid scan_layers / remat."""
  model = config.model
  field_checks.check_fields(
      'model', model, _fields(vit.VisionTransformer, _SET_BY_TRAIN), _SET_BY_TRAIN
  )
  transformer = model.get('transformer')
  if transformer is None or model.get('encoder') is not None:  # none, or a custom encoder's
    return
  field_checks.check_fields(
      'model.transformer', transformer, _fields(vit.Encoder, _SET_BY_MODEL), _SET_BY_MODEL
  )
  field_checks.check_type(
      'model.transformer.scan_layers', transformer.get('scan_layers', False), 'bool'
  )
  field_checks.check_type(
      'model.transformer.grads_as_dots', transformer.get('grads_as_dots', False), 'bool'
  )
  field_checks.check_choice('model.transformer.remat', transformer.get('remat', 'none'), vit.REMAT)
  options = dict(transformer.get('attention') or {})
  unknown = sorted(set(options) - {'impl', 'block_size', 'kernel'})
  if unknown:
    raise errors.UserInputError(
        f'config.model.transformer.attention has unknown fields '
        f'{unknown}; it takes impl, block_size and kernel.'
    )
  try:
    attention.validate_options(**options)
  except ValueError as e:
    raise errors.UserInputError(f'config.model.{e}') from None


def _check_batches(config, mesh):
  """Batch sizes that the mesh divides."""
  partitioning.validate_batch(config.batch, mesh, 'config.batch')
  partitioning.validate_batch(config.batch_eval, mesh, 'config.batch_eval')
  micro = config.batch // config.accum_steps
  if config.batch % config.accum_steps or micro % partitioning.data_parallel_size(mesh):
    raise errors.UserInputError(
        f'config.batch={config.batch} / config.accum_steps={config.accum_steps} '
        f'must give a whole micro-batch divisible by the '
        f'{partitioning.data_parallel_size(mesh)} data-parallel devices.'
    )


def _check_vit(config, mesh):
  """config.model of a ViT / PiT (classification, MAE): its fields, and a crop that the patch
  size (and a ResNet stem) divides."""
  del mesh
  if config.pp.channels == 4:
    raise field_checks.error(
        'pp.channels',
        4,
        "is for the latents of config.objective='diffusion'; " 'images have 1 or 3 channels',
    )
  _check_model(config)
  ph, pw = config.model.patches.size
  stem = resnet.stem_downsampling(config.model.get('resnet'))
  if config.pp.crop % (ph * stem) or config.pp.crop % (pw * stem):
    raise errors.UserInputError(
        f'config.pp.crop={config.pp.crop} is not divisible by '
        f'config.model.patches.size={tuple(config.model.patches.size)}'
        + (f' x {stem} (ResNet stem)' if stem > 1 else '')
        + '; change the crop size or the patch size.'
    )


def _check_patch_dropout(config):
  """config.patch_dropout: a rate in [0, 1) for the first `steps` steps of a classifier."""
  drop = config.get('patch_dropout')
  if drop is None:
    return
  if not objectives.patch_dropout_steps(config):
    return
  if objectives.objective(config) != 'classification':
    raise field_checks.error(
        'patch_dropout.rate',
        drop.rate,
        "is for config.objective='classification' "
        '(MAE masks tokens itself: config.mae.mask_ratio); set it to 0',
    )
  if config.model.get('transformer') is None or config.model.get('resnet') is not None:
    raise field_checks.error(
        'patch_dropout.rate',
        drop.rate,
        'leaves out patch tokens of a ViT or PiT; '
        'this model has no transformer or a ResNet stem. Set it to 0',
    )


_MAE_DECODER = (
    ('hidden_size', 'decoder width'),
    ('num_layers', 'decoder blocks'),
    ('num_heads', 'decoder attention heads'),
    ('mlp_dim', 'decoder MLP width'),
)


def _check_mae(config):
  """config.mae of a masked-autoencoder run (config.objective='mae')."""
  if 'mae' not in config:
    raise errors.UserInputError(
        "config.objective='mae' needs the config.mae fields (mask_ratio, "
        'norm_pix_loss, decoder); start from configs/mae.py.'
    )
  ratio = config.mae.mask_ratio
  field_checks.check_type('mae.mask_ratio', ratio, 'number')
  if not 0 <= ratio < 1:
    raise field_checks.error(
        'mae.mask_ratio',
        ratio,
        'must be in [0, 1), the share of tokens hidden from ' 'the encoder (MAE: 0.75)',
    )
  field_checks.check_type('mae.norm_pix_loss', config.mae.norm_pix_loss, 'bool')
  decoder = config.mae.decoder
  for field, why in _MAE_DECODER:
    field_checks.check_type(f'mae.decoder.{field}', decoder[field], 'int')
    if decoder[field] < 1:
      raise field_checks.error(f'mae.decoder.{field}', decoder[field], f'must be >= 1 ({why})')
  if decoder.hidden_size % decoder.num_heads:
    raise field_checks.error(
        'mae.decoder.hidden_size',
        decoder.hidden_size,
        f'must be divisible by mae.decoder.num_heads={decoder.num_heads}',
    )
  field_checks.check_choice('mae.decoder.posemb', decoder.posemb, ('sincos2d', 'learn'))
  ph, pw = config.model.patches.size
  if config.mae.norm_pix_loss and ph * pw * config.pp.channels == 1:
    raise field_checks.error(
        'mae.norm_pix_loss',
        True,
        'normalises each token by its own mean and '
        'variance, which turns the single value of a 1x1 token of a 1-channel image '
        'into 0; set it to False for PiT on grayscale images',
    )
  if config.model.get('resnet') is not None:
    raise errors.UserInputError(
        "config.objective='mae' masks the image's own patches; "
        'config.model.resnet (a hybrid) is not supported. Pick a ViT '
        'or PiT model.'
    )
  if config.pp.mixup:
    raise field_checks.error(
        'pp.mixup',
        config.pp.mixup,
        'mixes images, which a masked autoencoder '
        "should not reconstruct; set it to 0 with config.objective='mae'",
    )
  if config.pretrained_path:
    raise field_checks.error(
        'pretrained_path',
        config.pretrained_path,
        'loads a classifier; MAE pre-training starts from scratch. Fine-tune the '
        "encoder.npz it writes with config.objective='classification'",
    )


def _check_together(config):
  """Fields that only act together with another, checked together: a value that would be
  ignored, clamped or never reached is an error, not a silent no-op."""
  drop = config.get('patch_dropout')
  if drop is not None and bool(drop.rate) != bool(drop.steps):
    field, value, other = (
        ('patch_dropout.rate', drop.rate, 'patch_dropout.steps=0')
        if drop.rate
        else ('patch_dropout.steps', drop.steps, 'patch_dropout.rate=0')
    )
    raise field_checks.error(
        field,
        value,
        f'has no effect with config.{other}; set both (e.g. '
        '--config.patch_dropout.rate=0.5 --config.patch_dropout.steps=1000) or '
        'neither',
    )
  ra = config.pp.randaugment  # its range is the schema's
  if ra.magnitude and not ra.num_layers:
    raise field_checks.error(
        'pp.randaugment.magnitude',
        ra.magnitude,
        'has no effect with '
        'config.pp.randaugment.num_layers=0; set num_layers (e.g. 2) or magnitude 0',
    )
  first = config.profile.first_step
  if first > config.total_steps:
    raise field_checks.error(
        'profile.first_step',
        first,
        f'is past config.total_steps='
        f'{config.total_steps}: nothing would be profiled; pick a step in [1, '
        f'{config.total_steps}] or 0 (off)',
    )
  if config.pp.resize and config.pp.resize <= config.pp.crop:
    raise field_checks.error(
        'pp.resize',
        config.pp.resize,
        f'must be 0 (off) or larger than config.pp.crop='
        f'{config.pp.crop}: eval resizes the shorter side to it, then crops the center',
    )
  if config.get('pretrained_required') and not config.pretrained_path:
    raise errors.UserInputError(
        f'config.pretrained_path is not set, and this recipe ({config.model.get("model_name")})'
        ' fine-tunes a pretrained checkpoint: pass --config.pretrained_path=<the .npz file> '
        '(or configs/augreg.py:<file.npz>)'
    )
  if objectives.objective(config) == 'mae':
    for field in ('label_smoothing', 'eval_flip'):
      if config[field]:
        raise field_checks.error(
            field,
            config[field],
            "is for classifiers; config.objective='mae' "
            'reconstructs pixels and has no labels. Turn it off for pre-training '
            '(fine-tuning uses it)',
        )
  if not config.pretrained_strict and not config.pretrained_path:
    raise field_checks.error(
        'pretrained_strict',
        False,
        'has no effect without config.pretrained_path; ' 'remove it or set the path',
    )


# Every field configs/dit.py declares: one list, so a new field needs no second entry here.
_DIFFUSION_FIELDS = tuple(dit_configs.diffusion_fields())


def _check_diffusion(config, mesh):
  """config.model (a DiT) and config.diffusion of a diffusion run (configs/dit.py)."""
  if 'diffusion' not in config:
    raise errors.UserInputError(
        "config.objective='diffusion' needs the config.diffusion "
        'fields; start from configs/dit.py.'
    )
  d = config.diffusion
  unknown = sorted(set(d) - set(_DIFFUSION_FIELDS))
  if unknown:
    close = difflib.get_close_matches(unknown[0], _DIFFUSION_FIELDS, n=1, cutoff=0.6)
    hint = f"did you mean '{close[0]}'? " if close else ''
    raise errors.UserInputError(
        f'config.diffusion.{unknown[0]} is not a diffusion field; '
        f'{hint}the fields are {list(_DIFFUSION_FIELDS)}.'
    )
  field_checks.check_fields('model', config.model, _fields(dit.DiT, _SET_BY_TRAIN), _SET_BY_TRAIN)
  for field in ('scan_layers', 'grads_as_dots'):
    field_checks.check_type(f'model.{field}', config.model.get(field, False), 'bool')
  for field in ('steps', 'sample_steps', 'eval_samples_per_class', 'sample_batch'):
    field_checks.check_type(f'diffusion.{field}', d[field], 'int')
    if d[field] < 1:
      raise field_checks.error(f'diffusion.{field}', d[field], 'must be >= 1')
  field_checks.check_choice('diffusion.sampler', d.sampler, guidance.SAMPLERS)
  field_checks.check_choice(
      'diffusion.noise_schedule', d.noise_schedule, diffusion_schedule.NOISE_SCHEDULES
  )
  field_checks.check_type('diffusion.cfg_scale', d.cfg_scale, 'number')
  if d.cfg_scale < 1:
    raise field_checks.error(
        'diffusion.cfg_scale', d.cfg_scale, 'must be >= 1 (1 samples unguided)'
    )
  if d.cfg_scale > 1 and not config.model.get('class_dropout_prob', 0.1) > 0:
    raise field_checks.error(
        'diffusion.cfg_scale',
        d.cfg_scale,
        'needs the null class of ' 'config.model.class_dropout_prob > 0; set cfg_scale to 1',
    )
  channels = config.pp.channels
  if d.guide_channels is not None and not 1 <= d.guide_channels <= channels:
    raise field_checks.error(
        'diffusion.guide_channels',
        d.guide_channels,
        f'must be in 1..{channels} ' '(the input channels) or None for all of them',
    )
  try:
    diffusion_schedule.space_timesteps(
        d.steps, diffusion_objective.respacing(d.sampler, d.sample_steps)
    )
  except ValueError as e:
    raise field_checks.error(
        'diffusion.sample_steps',
        d.sample_steps,
        f'does not respace ' f'config.diffusion.steps={d.steps} for the {d.sampler} sampler ({e})',
    ) from None
  partitioning.validate_batch(d.sample_batch, mesh, 'config.diffusion.sample_batch')
  patch = config.model.get('patch_size', 2)
  if config.pp.crop % patch:
    raise field_checks.error(
        'pp.crop',
        config.pp.crop,
        f'is not divisible by config.model.patch_size='
        f'{patch}; change the crop size or the patch size',
    )
  for field, why in (
      ('pp.mixup', 'mixes images and labels'),
      ('label_smoothing', 'smooths class targets'),
      ('eval_flip', 'averages classifier logits'),
      ('pretrained_path', 'loads a classifier'),
  ):
    value = schema.get(config, field)
    if value:
      raise field_checks.error(
          field,
          value,
          f"{why}; config.objective='diffusion' trains a DiT from "
          'scratch on clean labels. Turn it off',
      )
  if objectives.patch_dropout_steps(config):
    raise field_checks.error(
        'patch_dropout.rate',
        config.patch_dropout.rate,
        'is for classifiers; set it ' "to 0 with config.objective='diffusion'",
    )
  if d.feature_network:
    classifier_features.resolve(d.feature_network)
  _check_vae(config)


def _check_vae(config):
  """config.diffusion.vae: a diffusers folder, set for a run on latents; no pixel FID."""
  vae = config.diffusion.get('vae')
  if vae is None:
    return
  if not isinstance(vae, str):
    raise field_checks.error('diffusion.vae', vae, 'must be a folder path (a string) or None')
  if '://' not in vae and not paths.exists(paths.join(vae, 'config.json')):
    raise errors.MissingInputError(
        f'config.diffusion.vae={vae!r} is not a diffusers VAE folder (no config.json there); '
        'give its folder (local, gs://, hf://stabilityai/sd-vae-ft-ema) or None for a pixel '
        'run.'
    )
  if config.diffusion.feature_network:
    raise field_checks.error(
        'diffusion.feature_network',
        config.diffusion.feature_network,
        'compares samples with the eval split in pixels, but config.diffusion.vae='
        f'{vae!r} makes this a latent run; set it to None (FID of decoded samples: '
        'python -m vit_jax.sample, then python -m vit_jax.evaluate)',
    )


def _check_mae_run(config, mesh):
  _check_mae(config)
  _check_vit(config, mesh)


# The checks of each objective's own fields, chosen by config.objective.
_OBJECTIVE_CHECKS = {
    'classification': _check_vit,
    'mae': _check_mae_run,
    'diffusion': _check_diffusion,
}


def validate(config, mesh):
  """Raises errors.UserInputError for the first bad field; types, then ranges, then shapes."""
  field_checks.check_schema_fields(config)
  _check_color(config)
  _check_optimization(config)
  _OBJECTIVE_CHECKS[objectives.objective(config)](config, mesh)
  _check_patch_dropout(config)
  _check_together(config)
  _check_batches(config, mesh)
