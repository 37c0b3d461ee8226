"""What used to be accepted silently is an error naming the field, the value and the fix.

A field that only acts together with another is checked together with it; counts that must
be positive are; class names must match the head; a shape mismatch names its real cause.
"""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vit_jax import aot
from vit_jax import checkpoint
from vit_jax import config_checks
from vit_jax import errors
from vit_jax import inference
from vit_jax.configs import augreg as augreg_configs
from vit_jax.configs import models as model_configs
from vit_jax.configs import overrides as config_overrides
from vit_jax.configs import pit as pit_configs
from vit_jax.configs import vit as vit_configs
from vit_jax.datasets import class_names as labels
from vit_jax.models import VisionTransformer
from vit_jax.runtime import partitioning


def _validate(config, **overrides):
  config.unlock()
  config.update_from_flattened_dict(overrides)
  config_checks.validate(config, partitioning.create_mesh(config.mesh))


@pytest.mark.parametrize(
    'overrides,expected',
    [
        (
            {'patch_dropout.rate': 0.5},
            'patch_dropout.rate=0.5 has no effect with config.' 'patch_dropout.steps=0',
        ),
        (
            {'patch_dropout.steps': 100},
            'patch_dropout.steps=100 has no effect with config.' 'patch_dropout.rate=0',
        ),
        (
            {'pp.randaugment.num_layers': 2, 'pp.randaugment.magnitude': 15},
            r'magnitude=15 must be in \[0, 10\]',
        ),
        ({'pp.randaugment.num_layers': 2, 'pp.randaugment.magnitude': -1}, r'must be in \[0, 10\]'),
        ({'pp.randaugment.magnitude': 9}, 'has no effect with config.pp.randaugment.num_layers=0'),
        ({'profile.first_step': 5401}, 'profile.first_step=5401 is past config.total_steps=5400'),
        ({'pp.resize': 10}, 'pp.resize=10 must be 0 .off. or larger than config.pp.crop=12'),
        (
            {'pretrained_strict': False},
            'pretrained_strict=False has no effect without config.' 'pretrained_path',
        ),
    ],
)
def test_fields_that_act_together_are_checked_together(overrides, expected):
  config = pit_configs.get_config('fashion_mnist')
  with pytest.raises(errors.UserInputError, match=expected):
    _validate(config, **overrides)


def test_fields_that_act_together_pass_together():
  _validate(
      pit_configs.get_config('fashion_mnist'),
      **{
          'patch_dropout.rate': 0.5,
          'patch_dropout.steps': 100,
          'profile.first_step': 5400,
          'pp.resize': 14,
      },
  )
  _validate(vit_configs.get_config('vit4,fashion_mnist'))  # patch dropout in the preset
  _validate(pit_configs.get_config('cifar100_pit_t'))  # RandAugment 2 x 9 in the preset


def test_classifier_fields_are_refused_with_a_masked_autoencoder():
  from vit_jax.configs import mae as mae_configs

  _validate(mae_configs.get_config('fashion_mnist'))
  _validate(mae_configs.get_config('fashion_mnist_finetune'), label_smoothing=0.1)
  for field, value in (('label_smoothing', 0.1), ('eval_flip', True)):
    with pytest.raises(errors.UserInputError, match=f'config.{field}={value} is for classifiers'):
      _validate(mae_configs.get_config('fashion_mnist'), **{field: value})


@pytest.mark.parametrize(
    'field,value,partner',
    [
        ('momentum', 0.5, "config.optim='sgd'"),
        ('adam_b2', 0.99, None),  # the preset's optimizer is AdamW: acts
        ('linear_end', 0.0, "config.decay_type='linear'"),
        ('profile.num_steps', 3, 'config.profile.first_step > 0'),
        ('pretrained_strict', False, 'config.pretrained_path'),
        ('pp.inception_crop_area', (0.2, 1.0), 'config.pp.inception_crop=True'),
        ('pp.blur_sigma', (0.5, 1.0), 'config.pp.blur_prob > 0'),
        ('pp.color_jitter.prob', 0.8, 'a config.pp.color_jitter strength > 0'),
    ],
)
def test_a_field_given_where_it_does_nothing_is_refused(field, value, partner):
  config = pit_configs.get_config('fashion_mnist')
  if partner is None:
    config_overrides.check(config, [field])
    return
  with pytest.raises(
      errors.UserInputError, match=f'has no effect here: it acts only with ' f'{re.escape(partner)}'
  ):
    config_overrides.check(config, [field])


def test_a_fine_tuning_recipe_without_its_checkpoint_is_refused():
  config = augreg_configs.get_config('S_32,cifar10')  # a model name: the file is still needed
  with pytest.raises(errors.UserInputError, match='config.pretrained_path is not set.*fine-tunes'):
    _validate(config, **{'mesh.data': -1, 'batch': 16, 'batch_eval': 16})
  _validate(
      augreg_configs.get_config('S_32,cifar10'),
      pretrained_path='/ckpts/S_32-i21k.npz',
      batch=16,
      batch_eval=16,
      accum_steps=1,
  )
  with pytest.raises(ValueError, match='is not a .npz file: give its path'):
    augreg_configs.get_config('S_32-i21k-300ep-lr_0.001,cifar10')


def test_aot_counts_must_be_positive():
  config = pit_configs.get_config('fashion_mnist')
  with pytest.raises(errors.UserInputError, match='--num_classes=0 must be >= 1'):
    aot.report(config, 'v5e:2x2', num_classes=0)
  with pytest.raises(errors.UserInputError, match='--num_slices=0 must be >= 1'):
    aot.report(config, 'v5e:2x2', num_slices=0)


@pytest.fixture(scope='module')
def tiny_checkpoint(tmp_path_factory):
  """A 10-class 'testing' ViT (32x32 RGB) saved as npz, and the model."""
  model = VisionTransformer(num_classes=10, **model_configs.MODEL_CONFIGS['testing'])
  params = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3)), train=False)['params']
  path = str(tmp_path_factory.mktemp('ckpt') / 'testing.npz')
  checkpoint.save(params, path)
  return path, model, params


def test_class_names_must_match_the_head_and_top_k_be_positive(tiny_checkpoint):
  path, _, _ = tiny_checkpoint
  model, params, size, channels, _ = inference.build(path, 'testing')
  images = np.zeros((1, size, size, channels), np.float32)
  with pytest.raises(errors.UserInputError, match='1000 class names for a head of 10 classes'):
    inference.classify(model, params, images, labels.get_labels('imagenet1k'))
  with pytest.raises(errors.UserInputError, match='--top_k=0 must be >= 1'):
    inference.classify(model, params, images, labels.get_labels('fashion_mnist'), top_k=0)
  top = inference.classify(model, params, images, None, top_k=20)[0]  # no names: class <i>
  assert len(top) == 10 and all(name.startswith('class ') for name, _ in top)
  with pytest.raises(errors.UserInputError, match='--batch=0 must be >= 1'):
    inference.benchmark(model, params, 0, size, channels, 3)
  with pytest.raises(
      errors.UserInputError,
      match='--image_size=40 is not a multiple of the ' "model's 16-pixel patches",
  ):
    inference.build(path, 'testing', image_size=40)


@pytest.mark.slow
def test_a_shape_mismatch_names_its_real_cause(tiny_checkpoint):
  """pp.channels=1 against an RGB checkpoint is named as such, not as 'the model name'."""
  path, model, _ = tiny_checkpoint
  gray = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 1)), train=False)['params']
  with pytest.raises(
      errors.UserInputError,
      match='parameter embedding/kernel: .* likely cause: '
      'the checkpoint takes 3-channel images and the model 1-channel ones: set '
      r'config.pp.channels=3',
  ):
    checkpoint.load_pretrained(
        pretrained_path=path, init_params=gray, model_config=model_configs.MODEL_CONFIGS['testing']
    )
  wide = VisionTransformer(
      num_classes=10, **dict(model_configs.MODEL_CONFIGS['testing'], patches={'size': (8, 8)})
  )
  params = wide.init(jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3)), train=False)['params']
  with pytest.raises(
      errors.UserInputError,
      match='the checkpoint has 16x16 patches and the ' r'model 8x8 \(config.model.patches.size\)',
  ):
    checkpoint.load_pretrained(
        pretrained_path=path,
        init_params=params,
        model_config=model_configs.MODEL_CONFIGS['testing'],
        old_grid=(2, 2),
        new_grid=(4, 4),
    )
