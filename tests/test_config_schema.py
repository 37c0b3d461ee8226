"""The config schema is the one source: defaults, checks and the docs' reference come from it."""

import pathlib

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import pytest

from vit_jax import config_checks
from vit_jax import errors
from vit_jax.configs import common
from vit_jax.configs import pit as pit_configs
from vit_jax.configs import schema
from vit_jax.configs import vit as vit_configs
from vit_jax.models import VisionTransformer
from vit_jax.runtime import partitioning

DOCS = pathlib.Path(__file__).parent.parent / 'docs' / 'config.md'


def test_docs_config_reference_is_printed_from_the_schema():
  assert (
      DOCS.read_text() == schema.reference_markdown()
  ), 'docs/config.md is stale: python -m vit_jax.configs.schema > docs/config.md'
  for field in schema.FIELDS:
    assert f'`{field.name}`' in DOCS.read_text()


def test_defaults_are_the_schema():
  config = common.get_config()
  for field in schema.FIELDS:
    value = schema.get(config, field.name)
    expected = field.default
    assert (value.to_dict() if hasattr(value, 'to_dict') else value) == expected, field.name


def _bad_values(field):
  """Values just outside the field's declared range, or of the wrong type."""
  if field.kind == 'choice':
    return ['not-a-choice']
  if field.kind == 'bool':
    return [1]
  if field.kind == 'range':  # a pair: reversed, or one end out of bounds, or not a pair
    high = field.high if field.high is not None else 10
    return [(high, field.low + 0.1), (field.low, high), 0.5]
  bad = ['7'] if field.kind in ('int', 'number') else []
  if field.low is not None:
    bad.append(field.low if field.low_open else field.low - 1)
  if field.high is not None:
    bad.append(field.high if field.high_open else field.high + 1)
  return bad


@pytest.mark.parametrize(
    'field', [f for f in schema.FIELDS if _bad_values(f)], ids=lambda f: f.name
)
def test_every_declared_bound_is_checked(field):
  mesh = partitioning.create_mesh({'data': -1})
  for value in _bad_values(field):
    # A config written in Python can hold any type: type_safe=False.
    config = ml_collections.ConfigDict(
        pit_configs.get_config('fashion_mnist').to_dict(), type_safe=False
    )
    *parents, last = field.name.split('.')
    node = config
    for name in parents:
      node = node[name]
    node[last] = value
    with pytest.raises(errors.UserInputError, match=rf'config\.{field.name}='):
      config_checks.validate(config, mesh)


def test_a_missing_field_is_named():
  config = pit_configs.get_config('fashion_mnist').unlock()
  del config['profile']
  with pytest.raises(errors.UserInputError, match=r'config\.profile\.first_step is missing'):
    config_checks.validate(config, partitioning.create_mesh({'data': -1}))


def _module_types(config):
  """The classes of every module a config's model runs (init on a tiny input)."""
  types = set()

  def record(next_fun, args, kwargs, context):
    types.add(type(context.module))
    return next_fun(*args, **kwargs)

  model = VisionTransformer(num_classes=10, **config.model)
  crop = config.model.patches.size[0] * 2
  with nn.intercept_methods(record):
    jax.eval_shape(
        lambda: model.init(jax.random.key(0), jnp.zeros((1, crop, crop, 1)), train=False)
    )
  return types


def test_dataset_presets_carry_no_cpu_settings():
  config = vit_configs.get_config('b16,mnist')
  assert config.dataset == 'mnist' and config.pp.crop == 28 and config.pp.channels == 1
  assert config.cpu_devices == 0 and not config.pp.on_device
  assert config.optim == 'sgd' and config.accum_steps == 8  # the original's fine-tuning
  assert not config.model.transformer.get('grads_as_dots', False)
  small = vit_configs.get_config('testing,mnist')
  modules = {t.__module__ for t in _module_types(small)}
  assert 'flax.linen.linear' in modules and 'flax.linen.normalization' in modules
  assert 'vit_jax.models.cpu_backward_layers' not in modules


def test_embedded_cpu_presets_name_the_cpu_recipe():
  for config in (
      vit_configs.get_config('vit4,fashion_mnist'),
      pit_configs.get_config('fashion_mnist'),
  ):
    assert config.cpu_devices == -1 and config.pp.on_device
    assert config.model.transformer.grads_as_dots
    assert any(t.__module__ == 'vit_jax.models.cpu_backward_layers' for t in _module_types(config))
  assert vit_configs.PRESETS['vit4,fashion_mnist'].__doc__.count('Command:') == 1
  for recipe in ('fashion_mnist', 'fashion_mnist_vit2'):
    assert 'Command:' in pit_configs.RECIPES[recipe].__doc__


@pytest.mark.parametrize(
    'module,arg,expected',
    [
        (pit_configs, 'imagenet_pit_x', "did you mean 'imagenet_pit_s'"),
        (vit_configs, 'b17,cifar10', "did you mean 'b16'"),
        (vit_configs, 'b16,cifar1O', "did you mean 'cifar10'"),
        (vit_configs, 'testing', r'<model>,<dataset>'),
    ],
)
def test_unknown_names_give_the_closest_choice(module, arg, expected):
  with pytest.raises(errors.UserInputError, match=expected):
    module.get_config(arg)
