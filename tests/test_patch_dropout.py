"""Patch dropout (config.patch_dropout): a classifier run on a subset of its patch tokens, and
the train step that uses it for the first `steps` steps only."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vit_jax import train
from vit_jax.configs import pit as pit_configs
from vit_jax.models import mae
from vit_jax.models import vit
from vit_jax.objectives import classification
from vit_jax.training import optim
from vit_jax.training import steps

_IMAGES = jax.random.normal(jax.random.PRNGKey(0), (4, 12, 12, 1))  # 3x3 = 9 patch tokens


def _vit(classifier):
  model = vit.VisionTransformer(
      num_classes=5,
      patches={'size': (4, 4)},
      hidden_size=16,
      classifier=classifier,
      posemb='sincos2d',
      transformer=dict(
          num_layers=2, mlp_dim=32, num_heads=2, dropout_rate=0.0, attention_dropout_rate=0.0
      ),
  )
  params = jax.jit(lambda rng: model.init(rng, _IMAGES[:1], train=False))(jax.random.PRNGKey(1))[
      'params'
  ]
  # A non-zero head (it starts at zero) so that logits depend on the tokens.
  params['head']['kernel'] = jax.random.normal(
      jax.random.PRNGKey(2), params['head']['kernel'].shape
  )
  return model, {'params': params}


@pytest.mark.parametrize('classifier', ['gap', 'token'])
def test_every_token_in_any_order_gives_the_full_models_logits(classifier):
  model, variables = _vit(classifier)
  apply = jax.jit(lambda subset: model.apply(variables, _IMAGES, train=False, token_subset=subset))
  full = apply(None)
  orders = jnp.stack([jax.random.permutation(jax.random.PRNGKey(i), 9) for i in range(4)])
  shuffled = apply(orders)
  np.testing.assert_allclose(shuffled, full, atol=1e-5)


@pytest.mark.slow
def test_subset_logits_are_the_head_on_the_pooled_encoded_subset():
  model, variables = _vit('gap')
  subset = jnp.array([[0, 4, 8], [1, 2, 3], [8, 7, 6], [5, 0, 2]])
  logits = model.apply(variables, _IMAGES, train=False, token_subset=subset)
  encoded = model.apply(variables, _IMAGES, train=False, visible_tokens=subset)  # [4, 3, 16]
  head = variables['params']['head']
  np.testing.assert_allclose(logits, encoded.mean(1) @ head['kernel'] + head['bias'], atol=1e-5)
  assert not np.allclose(logits, model.apply(variables, _IMAGES, train=False), atol=1e-3)
  with pytest.raises(ValueError, match='not both'):
    model.apply(variables, _IMAGES, train=False, token_subset=subset, visible_tokens=subset)


@pytest.mark.slow
def test_train_step_drops_patches_for_the_first_steps_only():
  config = pit_configs.get_config('fashion_mnist')  # PiT: one token per pixel
  config.update_from_flattened_dict(
      {
          'model.hidden_size': 16,
          'model.transformer.mlp_dim': 32,
          'model.transformer.num_layers': 1,
          'patch_dropout.rate': 0.75,
          'patch_dropout.steps': 2,
      }
  )
  model = train.make_model(config, 10)
  tx, schedule = optim.make_optimizer(config)
  images = jax.random.normal(jax.random.PRNGKey(0), (8, 8, 8, 1))  # 64 tokens, 16 kept
  labels = jax.nn.one_hot(jnp.arange(8) % 10, 10)
  params = model.init(jax.random.PRNGKey(1), images[:1], train=False)['params']
  params['head']['kernel'] = jax.random.normal(
      jax.random.PRNGKey(2), params['head']['kernel'].shape
  )
  step = jax.jit(steps.make_train_step(model, tx, schedule, config, 10))
  batch = {'image': images, 'label': labels}

  @jax.jit
  def ce_of(subset=None):
    logits = model.apply({'params': params}, images, train=False, token_subset=subset)
    return jnp.mean(-jnp.sum(labels * jax.nn.log_softmax(logits), -1))

  def loss_at(s):
    state = {'step': jnp.asarray(s, jnp.int32), 'params': params, 'opt_state': tx.init(params)}
    return float(step(state, batch)[1]['loss'])

  full = float(ce_of())
  for s in (0, 1):  # each step its own subsets: the step's key, the patch-dropout stream
    key = jax.random.fold_in(
        jax.random.fold_in(jax.random.PRNGKey(config.seed), s), classification.PATCH_DROPOUT_STREAM
    )
    subset = mae.random_masking(key, 8, 64, 0.75)[0]
    assert subset.shape == (8, 16)
    expected = float(ce_of(subset))
    np.testing.assert_allclose(loss_at(s), expected, rtol=1e-5)
    assert abs(expected - full) > 1e-3
  for s in (2, 5):  # from patch_dropout.steps on, every token
    np.testing.assert_allclose(loss_at(s), full, rtol=1e-5)
