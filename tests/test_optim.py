"""Schedules and optimizers against closed-form numbers computed here with numpy."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vit_jax.configs import common
from vit_jax.training import optim


def config_with(**fields):
  config = common.get_config()
  config.update(dict(grad_norm_clip=0.0, weight_decay=0.0))
  config.update(fields)
  return config.lock()


def test_warmup_then_cosine():
  schedule = optim.make_schedule(config_with(base_lr=0.1, warmup_steps=10, total_steps=110))
  steps = np.array([0, 5, 10, 35, 60, 85, 110, 200])
  progress = np.clip((steps - 10) / 100, 0, 1)
  expected = 0.1 * np.minimum(1, steps / 10) * 0.5 * (1 + np.cos(np.pi * progress))
  np.testing.assert_allclose([float(schedule(s)) for s in steps], expected, rtol=1e-5, atol=1e-9)


def test_warmup_then_linear_to_linear_end():
  schedule = optim.make_schedule(
      config_with(base_lr=0.2, warmup_steps=4, total_steps=20, decay_type='linear', linear_end=0.01)
  )
  np.testing.assert_allclose(float(schedule(2)), 0.1, rtol=1e-6)
  np.testing.assert_allclose(float(schedule(12)), 0.2 * (0.01 + 0.99 * 0.5), rtol=1e-6)
  np.testing.assert_allclose(float(schedule(20)), 0.2 * 0.01, rtol=1e-6)


def test_no_warmup_starts_at_base_lr():
  schedule = optim.make_schedule(config_with(base_lr=0.3, warmup_steps=0, total_steps=8))
  np.testing.assert_allclose(float(schedule(0)), 0.3, rtol=1e-6)


def _params():
  return {'dense': {'kernel': jnp.array([[1.0, -2.0], [0.5, 3.0]]), 'bias': jnp.array([1.0, -1.0])}}


def _grads():
  return {'dense': {'kernel': jnp.array([[0.1, 0.2], [-0.3, 0.4]]), 'bias': jnp.array([0.5, -0.5])}}


def _run(tx, steps):
  params, grads = _params(), _grads()
  state = tx.init(params)
  for _ in range(steps):
    updates, state = tx.update(grads, state, params)
    params = {'dense': {k: params['dense'][k] + updates['dense'][k] for k in params['dense']}}
  return {k: np.asarray(v) for k, v in params['dense'].items()}


def test_sgd_momentum_and_l2_decay_on_kernels_only():
  config = config_with(
      optim='sgd',
      momentum=0.9,
      weight_decay=0.1,
      base_lr=0.5,
      warmup_steps=0,
      total_steps=1000,
      decay_type='linear',
      linear_end=1.0,
  )
  tx, _ = optim.make_optimizer(config)  # constant lr 0.5
  got = _run(tx, 2)
  for key, decay in (('kernel', 0.1), ('bias', 0.0)):
    p, g = np.asarray(_params()['dense'][key]), np.asarray(_grads()['dense'][key])
    m = g + decay * p
    p1 = p - 0.5 * m
    m = 0.9 * m + g + decay * p1
    np.testing.assert_allclose(got[key], p1 - 0.5 * m, rtol=1e-6, err_msg=key)


def test_adamw_decoupled_decay_on_kernels_only():
  config = config_with(
      optim='adamw',
      adam_b1=0.9,
      adam_b2=0.95,
      weight_decay=0.3,
      base_lr=0.01,
      warmup_steps=0,
      total_steps=1000,
      decay_type='linear',
      linear_end=1.0,
  )
  tx, _ = optim.make_optimizer(config)
  got = _run(tx, 2)
  for key, decay in (('kernel', 0.3), ('bias', 0.0)):
    p, g = np.asarray(_params()['dense'][key]), np.asarray(_grads()['dense'][key])
    m = v = 0.0
    for t in (1, 2):
      m = 0.9 * m + 0.1 * g
      v = 0.95 * v + 0.05 * g**2
      update = (m / (1 - 0.9**t)) / (np.sqrt(v / (1 - 0.95**t)) + 1e-8)
      p = p - 0.01 * (update + decay * p)
    np.testing.assert_allclose(got[key], p, rtol=1e-5, err_msg=key)


def test_global_norm_clipping():
  config = config_with(
      optim='sgd',
      momentum=0.0,
      base_lr=1.0,
      warmup_steps=0,
      total_steps=1000,
      decay_type='linear',
      linear_end=1.0,
      grad_norm_clip=0.1,
  )
  tx, _ = optim.make_optimizer(config)
  got = _run(tx, 1)
  norm = np.sqrt(sum(np.sum(np.asarray(g) ** 2) for g in _grads()['dense'].values()))
  for key in ('kernel', 'bias'):
    expected = np.asarray(_params()['dense'][key]) - np.asarray(_grads()['dense'][key]) * (
        0.1 / norm
    )
    np.testing.assert_allclose(got[key], expected, rtol=1e-6, err_msg=key)


@pytest.mark.parametrize(
    'fields,message',
    [
        ({'optim': 'lamb'}, "config.optim='lamb'"),
        ({'decay_type': 'step'}, "config.decay_type='step'"),
        ({'warmup_steps': 10, 'total_steps': 10}, 'config.warmup_steps=10'),
        ({'optim': 'sgd', 'momentum': 1.5}, 'config.momentum=1.5'),
        ({'optim': 'adamw', 'adam_b2': 1.0}, 'config.adam_b2=1.0'),
        ({'weight_decay': -1.0}, 'config.weight_decay=-1.0'),
    ],
)
def test_bad_optimizer_fields_are_clear_errors(fields, message):
  with pytest.raises(ValueError, match=message.replace('.', r'\.').replace('[', r'\[')):
    optim.make_optimizer(config_with(**fields))


def test_decay_mask_does_not_count_the_stacked_layer_axis():
  """A scanned model decays exactly the parameters the unscanned one decays."""
  from vit_jax.configs import models
  from vit_jax.models import layer_stack
  from vit_jax.models import VisionTransformer

  config = models.MODEL_CONFIGS['testing'].to_dict()
  config['transformer']['num_layers'] = 2
  model = VisionTransformer(num_classes=3, **config)
  params = jax.eval_shape(
      lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3)), train=False)
  )['params']
  mask = optim.decay_mask(params)
  block = mask['Transformer']['encoderblock_0']
  assert block['MlpBlock_0']['Dense_0']['kernel'] and not block['LayerNorm_0']['scale']
  assert not block['MlpBlock_0']['Dense_0']['bias'] and not mask['head']['bias']
  assert block == mask['Transformer']['encoderblock_1']
  expected = dict(
      mask,
      Transformer={
          'encoderblock': block,
          **{k: v for k, v in mask['Transformer'].items() if not k.startswith('encoderblock_')},
      },
  )
  assert optim.decay_mask(jax.eval_shape(layer_stack.stack, params)) == expected


def _two_block_tree(value=1.0):
  leaf = lambda *shape: jnp.full(shape, value, jnp.float32)
  block = {'LayerNorm_0': {'scale': leaf(4)}, 'MlpBlock_0': {'Dense_0': {'kernel': leaf(4, 4)}}}
  return {
      'cls': leaf(1, 1, 4),
      'embedding': {'kernel': leaf(3, 4)},
      'Transformer': {
          'posembed_input': {'pos_embedding': leaf(1, 5, 4)},
          'encoderblock_0': block,
          'encoderblock_1': block,
          'encoder_norm': {'scale': leaf(4)},
      },
      'head': {'kernel': leaf(4, 2)},
  }


def test_layer_decay_scales_each_update_by_its_depth_in_both_layouts():
  from vit_jax.models import layer_stack

  config = config_with(
      optim='adamw', base_lr=0.1, warmup_steps=0, total_steps=10, weight_decay=0.1, layer_decay=0.5
  )
  params, grads = _two_block_tree(1.0), _two_block_tree(0.3)
  tx, _ = optim.make_optimizer(config)
  plain, _ = optim.make_optimizer(
      config_with(optim='adamw', base_lr=0.1, warmup_steps=0, total_steps=10, weight_decay=0.1)
  )
  updates, _ = tx.update(grads, tx.init(params), params)
  reference, _ = plain.update(grads, plain.init(params), params)
  # depth 2: the embedding, class token and posemb get 0.5**3, block i 0.5**(2 - i), the
  # final norm and the head 0.5**0.
  factors = {
      'cls': 0.125,
      'embedding': 0.125,
      'posembed_input': 0.125,
      'encoderblock_0': 0.25,
      'encoderblock_1': 0.5,
      'encoder_norm': 1.0,
      'head': 1.0,
  }
  flat = jax.tree_util.tree_flatten_with_path(updates)[0]
  ref = dict(jax.tree_util.tree_flatten_with_path(reference)[0])
  for path, value in flat:
    name = jax.tree_util.keystr(path, simple=True, separator='/')
    factor = next(f for key, f in factors.items() if key in name.split('/'))
    np.testing.assert_allclose(value, factor * ref[path], rtol=1e-6, err_msg=name)
  stacked = layer_stack.stack(params)
  stacked_updates, _ = tx.update(layer_stack.stack(grads), tx.init(stacked), stacked)
  jax.tree.map(
      lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6),
      layer_stack.unstack(stacked_updates),
      updates,
  )
  with pytest.raises(ValueError, match=r'config.layer_decay=0.0 must be in \(0, 1\]'):
    optim.make_optimizer(config_with(layer_decay=0))
