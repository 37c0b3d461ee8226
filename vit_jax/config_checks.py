"""validate(config, mesh): every config error found before anything is compiled.

A bad value otherwise surfaces late and far from its cause: `keep_checkpoints=0` deletes the
final checkpoint, `progress_every=0` is a ZeroDivisionError after compiling, `dtype='bf16'`
a numpy TypeError. Each error is an `errors.UserInputError` naming the field, the value and
the fix. The optimizer's own checks (vit_jax/optim.py) run here too, so they also come first.
"""
import dataclasses
import difflib
import math
import numbers

from vit_jax import attention
from vit_jax.configs import schema
from vit_jax import errors
from vit_jax import objectives
from vit_jax import optim
from vit_jax.runtime import partitioning
from vit_jax.models import resnet
from vit_jax.models import vit

_DTYPE_ALIASES = {'bf16': 'bfloat16', 'fp16': 'float16', 'f16': 'float16', 'half': 'float16',
                  'fp32': 'float32', 'f32': 'float32', 'float': 'float32'}

_KINDS = {kind: schema.KINDS[kind] for kind in ('int', 'number', 'bool')}


def _error(field, value, requirement):
  return errors.UserInputError(f'config.{field}={value!r} {requirement}')


def _check_type(field, value, kind):
  """The value has the type `kind` names (bool is not a number; None is not allowed)."""
  is_bool = isinstance(value, bool)
  ok = {'int': isinstance(value, numbers.Integral) and not is_bool,
        'number': isinstance(value, numbers.Real) and not is_bool,
        'bool': is_bool}[kind]
  if not ok:
    name, example = _KINDS[kind]
    raise _error(field, value, f'has type {type(value).__name__}; it must be {name}, e.g. '
                 f'--config.{field}={example}')


def _check_bounds(field, value):
  """`value` within the schema's bounds of `field` (a checked number)."""
  why = field.why or field.doc
  if field.high is not None:
    low_ok = value > field.low if field.low_open else value >= field.low
    high_ok = value < field.high if field.high_open else value <= field.high
    if not (low_ok and high_ok):
      interval = (f"{'(' if field.low_open else '['}{field.low}, {field.high}"
                  f"{')' if field.high_open else ']'}")
      raise _error(field.name, value, f'must be in {interval} ({why})')
  elif field.low is not None:
    if field.low_open and not value > field.low:
      raise _error(field.name, value, f'must be a finite number > {field.low} ({why})')
    if not field.low_open and value < field.low:
      raise _error(field.name, value, f'must be >= {field.low} ({why}); set it to '
                   f'{field.low} or more')


def _check_schema_fields(config):
  """Every field of the schema: its type, then its bounds or choices."""
  for field in schema.FIELDS:
    try:
      value = schema.get(config, field.name)
    except (KeyError, AttributeError):
      raise errors.UserInputError(
          f'config.{field.name} is missing; build configs on vit_jax.configs.common.get_config(),'
          f' which sets it to {field.default!r}') from None
    if value is None and field.optional:
      continue
    if field.kind == 'choice':
      _check_choice(field.name, value, field.choices,
                    _DTYPE_ALIASES if field.choices == schema.DTYPES else None)
      continue
    if field.kind not in _KINDS:  # str and dict fields are checked where they are used
      continue
    _check_type(field.name, value, field.kind)
    if field.kind == 'number' and not math.isfinite(value):
      raise _error(field.name, value, 'is not finite; set a finite number')
    _check_bounds(field, value)


def _check_choice(field, value, choices, aliases=None):
  same_type = isinstance(value, type(choices[0])) and not isinstance(value, bool)
  if same_type and value in choices:
    return
  hint = ''
  if isinstance(value, str) and all(isinstance(c, str) for c in choices):
    close = (aliases or {}).get(value.lower()) or next(
        iter(difflib.get_close_matches(value, choices, n=1, cutoff=0.5)), None)
    hint = f"; did you mean '{close}'?" if close else ''
  raise _error(field, value, f'is not one of {choices}{hint}')


def _check_optimization(config):
  optim.make_optimizer(config)  # checks that relate fields (warmup, momentum, betas, decay)


def _fields(module_class, set_by_caller):
  return sorted({f.name for f in dataclasses.fields(module_class)}
                - {'parent', 'name'} - set(set_by_caller))


# Keyword arguments the caller passes itself, so a config entry for them would clash.
_SET_BY_TRAIN = {'num_classes': 'the dataset', 'dtype': 'config.dtype',
                 'param_dtype': 'config.param_dtype'}
_SET_BY_MODEL = {'posemb': 'config.model.posemb', 'dtype': 'config.dtype',
                 'param_dtype': 'config.param_dtype',
                 'sow_attention_weights': 'config.model.sow_attention_weights'}


def _check_fields(field, node, allowed, set_elsewhere):
  """Every key of `node` is a keyword of the module it configures: a typo is an error."""
  for key in node:
    if key in set_elsewhere:
      raise errors.UserInputError(f'config.{field}.{key} is set by {set_elsewhere[key]}; '
                                  f'remove config.{field}.{key}.')
    if key not in allowed:
      close = difflib.get_close_matches(key, allowed, n=1, cutoff=0.6)
      hint = f"did you mean '{close[0]}'? " if close else ''
      raise errors.UserInputError(f'config.{field}.{key} is not a field of the model; {hint}'
                                  f'the fields are {allowed}.')


def _check_model(config):
  """config.model: known fields only, and valid scan_layers / remat."""
  model = config.model
  _check_fields('model', model, _fields(vit.VisionTransformer, _SET_BY_TRAIN), _SET_BY_TRAIN)
  transformer = model.get('transformer')
  if transformer is None or model.get('encoder') is not None:  # none, or a custom encoder's
    return
  _check_fields('model.transformer', transformer, _fields(vit.Encoder, _SET_BY_MODEL),
                _SET_BY_MODEL)
  _check_type('model.transformer.scan_layers', transformer.get('scan_layers', False), 'bool')
  _check_type('model.transformer.grads_as_dots', transformer.get('grads_as_dots', False),
              'bool')
  _check_choice('model.transformer.remat', transformer.get('remat', 'none'), vit.REMAT)
  options = dict(transformer.get('attention') or {})
  unknown = sorted(set(options) - {'impl', 'block_size', 'kernel'})
  if unknown:
    raise errors.UserInputError(f'config.model.transformer.attention has unknown fields '
                                f'{unknown}; it takes impl, block_size and kernel.')
  try:
    attention.validate_options(**options)
  except ValueError as e:
    raise errors.UserInputError(f'config.model.{e}') from None


def _check_shapes(config, mesh):
  """Batch and crop sizes that the mesh and the patch size can divide."""
  partitioning.validate_batch(config.batch, mesh, 'config.batch')
  partitioning.validate_batch(config.batch_eval, mesh, 'config.batch_eval')
  micro = config.batch // config.accum_steps
  if config.batch % config.accum_steps or micro % partitioning.data_parallel_size(mesh):
    raise errors.UserInputError(
        f'config.batch={config.batch} / config.accum_steps={config.accum_steps} '
        f'must give a whole micro-batch divisible by the '
        f'{partitioning.data_parallel_size(mesh)} data-parallel devices.')
  ph, pw = config.model.patches.size
  stem = resnet.stem_downsampling(config.model.get('resnet'))
  if config.pp.crop % (ph * stem) or config.pp.crop % (pw * stem):
    raise errors.UserInputError(
        f'config.pp.crop={config.pp.crop} is not divisible by '
        f'config.model.patches.size={tuple(config.model.patches.size)}'
        + (f' x {stem} (ResNet stem)' if stem > 1 else '')
        + '; change the crop size or the patch size.')


def _check_patch_dropout(config):
  """config.patch_dropout: a rate in [0, 1) for the first `steps` steps of a classifier."""
  drop = config.get('patch_dropout')
  if drop is None:
    return
  if not objectives.patch_dropout_steps(config):
    return
  if objectives.objective(config) != 'classification':
    raise _error('patch_dropout.rate', drop.rate, "is for config.objective='classification' "
                 '(MAE masks tokens itself: config.mae.mask_ratio); set it to 0')
  if config.model.get('transformer') is None or config.model.get('resnet') is not None:
    raise _error('patch_dropout.rate', drop.rate, 'leaves out patch tokens of a ViT or PiT; '
                 'this model has no transformer or a ResNet stem. Set it to 0')


_MAE_DECODER = (('hidden_size', 'decoder width'), ('num_layers', 'decoder blocks'),
                ('num_heads', 'decoder attention heads'), ('mlp_dim', 'decoder MLP width'))


def _check_mae(config):
  """config.mae of a masked-autoencoder run (config.objective='mae')."""
  if 'mae' not in config:
    raise errors.UserInputError("config.objective='mae' needs the config.mae fields (mask_ratio, "
                                'norm_pix_loss, decoder); start from configs/mae.py.')
  ratio = config.mae.mask_ratio
  _check_type('mae.mask_ratio', ratio, 'number')
  if not 0 <= ratio < 1:
    raise _error('mae.mask_ratio', ratio, 'must be in [0, 1), the share of tokens hidden from '
                 'the encoder (MAE: 0.75)')
  _check_type('mae.norm_pix_loss', config.mae.norm_pix_loss, 'bool')
  decoder = config.mae.decoder
  for field, why in _MAE_DECODER:
    _check_type(f'mae.decoder.{field}', decoder[field], 'int')
    if decoder[field] < 1:
      raise _error(f'mae.decoder.{field}', decoder[field], f'must be >= 1 ({why})')
  if decoder.hidden_size % decoder.num_heads:
    raise _error('mae.decoder.hidden_size', decoder.hidden_size,
                 f'must be divisible by mae.decoder.num_heads={decoder.num_heads}')
  _check_choice('mae.decoder.posemb', decoder.posemb, ('sincos2d', 'learn'))
  ph, pw = config.model.patches.size
  if config.mae.norm_pix_loss and ph * pw * config.pp.channels == 1:
    raise _error('mae.norm_pix_loss', True, 'normalises each token by its own mean and '
                 'variance, which turns the single value of a 1x1 token of a 1-channel image '
                 'into 0; set it to False for PiT on grayscale images')
  if config.model.get('resnet') is not None:
    raise errors.UserInputError('config.objective=\'mae\' masks the image\'s own patches; '
                                'config.model.resnet (a hybrid) is not supported. Pick a ViT '
                                'or PiT model.')
  if config.pp.mixup:
    raise _error('pp.mixup', config.pp.mixup, "mixes images, which a masked autoencoder "
                 "should not reconstruct; set it to 0 with config.objective='mae'")
  if config.pretrained_path:
    raise _error('pretrained_path', config.pretrained_path,
                 "loads a classifier; MAE pre-training starts from scratch. Fine-tune the "
                 "encoder.npz it writes with config.objective='classification'")


def _check_together(config):
  """Fields that only act together with another, checked together: a value that would be
  ignored, clamped or never reached is an error, not a silent no-op."""
  drop = config.get('patch_dropout')
  if drop is not None and bool(drop.rate) != bool(drop.steps):
    field, value, other = (('patch_dropout.rate', drop.rate, 'patch_dropout.steps=0')
                           if drop.rate else ('patch_dropout.steps', drop.steps,
                                              'patch_dropout.rate=0'))
    raise _error(field, value, f'has no effect with config.{other}; set both (e.g. '
                 '--config.patch_dropout.rate=0.5 --config.patch_dropout.steps=1000) or '
                 'neither')
  ra = config.pp.randaugment  # its range is the schema's
  if ra.magnitude and not ra.num_layers:
    raise _error('pp.randaugment.magnitude', ra.magnitude, 'has no effect with '
                 'config.pp.randaugment.num_layers=0; set num_layers (e.g. 2) or magnitude 0')
  first = config.profile.first_step
  if first > config.total_steps:
    raise _error('profile.first_step', first, f'is past config.total_steps='
                 f'{config.total_steps}: nothing would be profiled; pick a step in [1, '
                 f'{config.total_steps}] or 0 (off)')
  if config.pp.resize and config.pp.resize <= config.pp.crop:
    raise _error('pp.resize', config.pp.resize, f'must be 0 (off) or larger than config.pp.crop='
                 f'{config.pp.crop}: eval resizes the shorter side to it, then crops the center')
  if config.get('pretrained_required') and not config.pretrained_path:
    raise errors.UserInputError(
        f'config.pretrained_path is not set, and this recipe ({config.model.get("model_name")})'
        ' fine-tunes a pretrained checkpoint: pass --config.pretrained_path=<the .npz file> '
        '(or configs/augreg.py:<file.npz>)')
  if objectives.objective(config) == 'mae':
    for field in ('label_smoothing', 'eval_flip'):
      if config[field]:
        raise _error(field, config[field], "is for classifiers; config.objective='mae' "
                     'reconstructs pixels and has no labels. Turn it off for pre-training '
                     '(fine-tuning uses it)')
  if not config.pretrained_strict and not config.pretrained_path:
    raise _error('pretrained_strict', False, 'has no effect without config.pretrained_path; '
                 'remove it or set the path')


def validate(config, mesh):
  """Raises errors.UserInputError for the first bad field; types, then ranges, then shapes."""
  _check_schema_fields(config)
  _check_optimization(config)
  if objectives.objective(config) == 'mae':
    _check_mae(config)
  _check_patch_dropout(config)
  _check_together(config)
  _check_model(config)
  _check_shapes(config, mesh)
