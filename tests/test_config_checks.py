"""config_checks.validate: each bad value is a UserInputError naming the field and the value."""

import os

import ml_collections
import pytest

from vit_jax import config_checks
from vit_jax import errors
from vit_jax.configs import pit as pit_configs
from vit_jax.runtime import partitioning


def _config(**overrides):
  config = pit_configs.get_config('fashion_mnist')
  config.unlock()
  config.update_from_flattened_dict(overrides)
  return config


def _validate(config):
  config_checks.validate(config, partitioning.create_mesh(config.mesh))


def test_presets_pass():
  _validate(_config())
  _validate(_config(dtype='bfloat16', grad_norm_clip=None, eval_every=0, prefetch=0))
  _validate(_config(param_dtype='bfloat16'))


@pytest.mark.parametrize(
    'field,value,expected',
    [
        ('keep_checkpoints', 0, 'final one'),
        ('profile.first_step', -1, '>= 0'),
        ('profile.num_steps', 0, '>= 1'),
        ('keep_checkpoints', -2, '>= 1'),
        ('checkpoint_every', 0, '>= 1'),
        ('progress_every', 0, '>= 1'),
        ('eval_every', -1, '>= 0'),
        ('total_steps', 0, '>= 1'),
        ('base_lr', 0.0, '> 0'),
        ('base_lr', -1e-3, '> 0'),
        ('base_lr', float('nan'), 'finite'),
        ('base_lr', float('inf'), 'finite'),
        ('warmup_steps', -1, 'config.total_steps=5400'),
        ('warmup_steps', 5401, 'config.total_steps=5400'),
        ('dtype', 'bf16', "did you mean 'bfloat16'"),
        ('dtype', 'float64', 'float32'),
        ('accum_steps', 0, '>= 1'),
        ('batch', 0, '>= 1'),
        ('batch_eval', -8, '>= 1'),
        ('label_smoothing', 1.0, '[0, 1)'),
        ('label_smoothing', -0.1, '[0, 1)'),
        ('grad_norm_clip', -1.0, '>= 0'),
        ('weight_decay', -0.1, '>= 0'),
        ('pp.crop', 0, '>= 1'),
        ('pp.mixup', -0.5, '>= 0'),
        ('prefetch', -1, '>= 0'),
        ('optim', 'adam', "did you mean 'adamw'"),
        ('decay_type', 'cos', 'not one of'),
        ('adam_b2', 1.5, '[0, 1)'),
        ('pp.channels', 2, 'not one of'),
        # Wrong types: a string where a number is expected, a float where an integer is.
        ('base_lr', '1e-3', 'must be a number'),
        ('keep_checkpoints', '3', 'must be an integer'),
        ('total_steps', 100.5, 'must be an integer'),
        ('batch', True, 'must be an integer'),
        ('label_smoothing', None, 'must be a number'),
        ('grad_norm_clip', 'off', 'must be a number'),
        ('pp.mixup', 'yes', 'must be a number'),
        ('pp.skip_undecodable', 1, 'True or False'),
        ('tfds_download', 'no', 'True or False'),
        ('dtype', 16, 'not one of'),
        ('param_dtype', 'bf16', "did you mean 'bfloat16'"),
        ('param_dtype', 'int8', 'not one of'),
        ('model.transformer.scan_layers', 1, 'True or False'),
        ('model.transformer.scan_layers', 'yes', 'True or False'),
        ('model.transformer.remat', 'dot', "did you mean 'dots'"),
        ('model.transformer.remat', None, 'not one of'),
        ('patch_dropout.rate', 1.0, '[0, 1)'),
        ('patch_dropout.rate', -0.5, '[0, 1)'),
        ('patch_dropout.rate', '0.5', 'must be a number'),
        ('patch_dropout.steps', -1, '>= 0'),
        ('patch_dropout.steps', 100.5, 'must be an integer'),
        # The MoCo-v3 augmentation: probabilities, hue, and (low, high) pairs.
        ('pp.grayscale_prob', 1.5, '[0, 1]'),
        ('pp.blur_prob', -0.1, '[0, 1]'),
        ('pp.solarize_prob', 2, '[0, 1]'),
        ('pp.color_jitter.prob', 1.2, '[0, 1]'),
        ('pp.color_jitter.hue', 0.6, '[0, 0.5]'),
        ('pp.color_jitter.brightness', -0.4, '>= 0'),
        ('pp.inception_crop_area', (0.5, 0.2), 'low <= high, both (0, 1]'),
        ('pp.inception_crop_area', (0.0, 1.0), 'e.g. --config.pp.inception_crop_area="(0.2,1.0)"'),
        ('pp.inception_crop_area', (0.2, 1.5), 'shares of the image area'),
        ('pp.inception_crop_area', 0.2, 'a pair (low, high)'),
        ('pp.inception_crop_area', (0.2, 0.5, 1.0), 'a pair (low, high)'),
        ('pp.blur_sigma', (0.0, 2.0), 'both > 0'),
    ],
)
def test_bad_value_names_field_and_value(field, value, expected):
  # A config written in Python (not --config overrides) can hold any type: type_safe=False.
  config = ml_collections.ConfigDict(_config().to_dict(), type_safe=False)
  *parents, last = field.split('.')
  node = config
  for name in parents:
    node = node[name]
  node[last] = value
  with pytest.raises(errors.UserInputError) as error:
    _validate(config)
  message = str(error.value)
  assert f'config.{field}=' in message, message
  assert repr(value) in message or str(value) in message, message
  assert expected in message, message


def test_patch_dropout_is_for_classifiers_with_a_transformer():
  from vit_jax.configs import mae as mae_configs
  from vit_jax.configs import vit as vit_configs

  drop = {'patch_dropout.rate': 0.5, 'patch_dropout.steps': 100}
  _validate(_config(**drop))
  with pytest.raises(errors.UserInputError, match='has no effect'):  # was silently off
    _validate(_config(**{'patch_dropout.rate': 0.5, 'patch_dropout.steps': 0}))
  mae_config = mae_configs.get_config('fashion_mnist')
  mae_config.update_from_flattened_dict(drop)
  hybrid = vit_configs.get_config('r50_b16,cifar10')
  hybrid.update_from_flattened_dict(drop)
  for config, expected in [(mae_config, 'mask_ratio'), (hybrid, 'ResNet stem')]:
    with pytest.raises(errors.UserInputError, match=r'config\.patch_dropout\.rate=0\.5') as error:
      _validate(config)
    assert expected in str(error.value)


@pytest.mark.parametrize(
    'overrides,field',
    [
        ({'pp.color_jitter.saturation': 0.4}, 'pp.color_jitter.saturation'),
        ({'pp.color_jitter.hue': 0.1}, 'pp.color_jitter.hue'),
        ({'pp.grayscale_prob': 0.2}, 'pp.grayscale_prob'),
    ],
)
def test_colour_ops_on_grayscale_images_are_refused(overrides, field):
  _validate(_config(**{'pp.on_device': False, 'pp.color_jitter.brightness': 0.4}))  # acts
  with pytest.raises(errors.UserInputError, match=rf'config\.{field}=.*channels=1.*channels=3'):
    _validate(_config(**{'pp.on_device': False, **overrides}))


def test_the_pit_paper_recipes_use_moco_v3_augmentation():
  for recipe in ('cifar100_pit_t', 'imagenet_pit_b_vit2'):
    config = pit_configs.get_config(recipe)
    pp = config.pp
    assert tuple(pp.inception_crop_area) == (0.2, 1.0) and pp.flip
    jitter = pp.color_jitter
    assert (jitter.brightness, jitter.contrast, jitter.saturation, jitter.hue) == (0.4,) * 4
    assert jitter.prob == 0.8 and pp.grayscale_prob == 0.2
    assert pp.blur_prob == pp.solarize_prob == 0 and pp.randaugment.num_layers == 0
    _validate(_config_of(config))


def _config_of(config):
  """A paper recipe sized to validate on the 8 test devices."""
  config = config.unlock()
  config.batch = config.batch_eval = 64
  return config


def test_errors_are_value_errors_and_missing_inputs_are_file_errors():
  assert issubclass(errors.UserInputError, ValueError)
  assert issubclass(errors.MissingInputError, errors.UserInputError)
  assert issubclass(errors.MissingInputError, FileNotFoundError)


def test_mesh_and_batch_errors_are_user_input_errors():
  with pytest.raises(errors.UserInputError, match='needs 3 devices'):
    partitioning.create_mesh({'data': 3})
  with pytest.raises(errors.UserInputError, match='config.batch=12 is not divisible'):
    _validate(_config(batch=12))


@pytest.mark.parametrize(
    'field,value,expected',
    [
        ('model.transformer.scan_layer', True, "did you mean 'scan_layers'"),
        ('model.transformer.rematt', 'full', "did you mean 'remat'"),
        ('model.hidden_sise', 64, "did you mean 'hidden_size'"),
        ('model.dtype', 'bfloat16', 'is set by config.dtype'),
        ('model.transformer.param_dtype', 'bfloat16', 'is set by config.param_dtype'),
    ],
)
def test_unknown_model_fields_are_errors_not_defaults(field, value, expected):
  config = ml_collections.ConfigDict(_config().to_dict(), type_safe=False)
  *parents, last = field.split('.')
  node = config
  for name in parents:
    node = node[name]
  node[last] = value
  with pytest.raises(errors.UserInputError, match=f'config.{field} ') as error:
    _validate(config)
  assert expected in str(error.value), str(error.value)


PRESETS = [
    ('vit.py', 'b16,cifar10'),
    ('vit.py', 'r50_b16,imagenet2012'),
    ('vit.py', 'vit4,fashion_mnist'),
    ('pit.py', 'fashion_mnist'),
    ('pit.py', 'cifar100_pit_t_vit2'),
    ('augreg.py', 'R26_S_32,oxford_iiit_pet'),
]


def _parse(config_file, arg, *overrides):
  """The config as vit_jax.main gets it: config_flags on the file, locked, with overrides."""
  from absl import flags
  from ml_collections import config_flags

  from vit_jax import configs

  path = os.path.join(os.path.dirname(configs.__file__), config_file)
  argv = ['main', f'--config={path}:{arg}', *overrides]
  values = flags.FlagValues()  # override flags are declared from argv, as from sys.argv
  config_flags.DEFINE_config_file(
      'config', None, '', flag_values=values, lock_config=True, sys_argv=argv
  )
  values(argv)
  return values.config


@pytest.mark.parametrize('config_file,arg', PRESETS)
def test_new_model_fields_are_set_from_the_command_line(config_file, arg):
  config = _parse(config_file, arg)
  assert config.model.transformer.scan_layers is False
  assert config.model.transformer.remat == 'none' and config.param_dtype == 'float32'
  config = _parse(
      config_file,
      arg,
      '--config.model.transformer.scan_layers=True',
      '--config.model.transformer.remat=dots',
      '--config.param_dtype=bfloat16',
  )
  assert config.model.transformer.scan_layers is True
  assert config.model.transformer.remat == 'dots' and config.param_dtype == 'bfloat16'
  config_checks._check_model(config)
  with pytest.raises(AttributeError, match='Did you mean "scan_layers"'):  # locked: no new keys
    _parse(config_file, arg, '--config.model.transformer.scan_layer=True')
