"""Scanned encoder (transformer.scan_layers) and remat against the unscanned, unrematted model."""

import functools

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vit_jax.models import layer_stack
from vit_jax.models import VisionTransformer

X = jax.random.normal(jax.random.PRNGKey(0), (2, 16, 16, 3))


def _model(classifier='token', **transformer):
  t = dict(num_layers=2, mlp_dim=32, num_heads=2, dropout_rate=0.1, attention_dropout_rate=0.1)
  return VisionTransformer(
      num_classes=5,
      patches={'size': (4, 4)},
      hidden_size=16,
      classifier=classifier,
      transformer=dict(t, **transformer),
  )


@functools.cache
def _params(classifier='token', seed=1):
  """Initial parameters of the unscanned `_model(classifier)`, moved off their init values
  (the head is zero at init). Built once per classifier (tests only read them); the noise
  comes from numpy, so no XLA program is compiled per leaf shape."""
  model = _model(classifier)
  params = jax.jit(functools.partial(model.init, train=False))(jax.random.PRNGKey(seed), X)
  rng = np.random.default_rng(seed + 1)
  return jax.tree.map(
      lambda p: np.asarray(p) + 0.1 * rng.standard_normal(p.shape, np.float32), params['params']
  )


def _grads(model, params, train):
  def loss(p):
    out = model.apply({'params': p}, X, train=train, rngs={'dropout': jax.random.PRNGKey(7)})
    return jnp.sum(out * jnp.arange(out.shape[-1]))

  return jax.jit(jax.value_and_grad(loss))(params)


def _flat(tree):
  return {'/'.join(k): v for k, v in flax.traverse_util.flatten_dict(tree).items()}


def _assert_trees_close(a, b, tol):
  """Every entry within `tol` times the largest magnitude in `b` (float32 rounding)."""
  fa, fb = _flat(a), _flat(b)
  assert sorted(fa) == sorted(fb)
  scale = max(float(np.abs(v).max()) for v in fb.values())
  for key in fa:
    np.testing.assert_allclose(fa[key], fb[key], atol=tol * scale, rtol=0, err_msg=key)


def test_scanned_parameters_are_the_stacked_blocks():
  scanned = _model(scan_layers=True)
  shapes = jax.eval_shape(functools.partial(scanned.init, train=False), jax.random.PRNGKey(0), X)[
      'params'
  ]
  encoder = shapes['Transformer']
  assert set(encoder) == {'encoderblock', 'encoder_norm', 'posembed_input'}
  assert set(encoder['encoderblock']) == {
      'LayerNorm_0',
      'MultiHeadDotProductAttention_0',
      'LayerNorm_1',
      'MlpBlock_0',
  }
  assert encoder['encoderblock']['MlpBlock_0']['Dense_0']['kernel'].shape == (2, 16, 32)
  unscanned = _params()
  stacked = layer_stack.stack(unscanned)
  assert jax.tree.map(lambda s: (s.shape, s.dtype), shapes) == jax.tree.map(
      lambda s: (s.shape, s.dtype), stacked
  )
  assert layer_stack.is_stacked(stacked) and layer_stack.num_layers(stacked) == 2
  assert layer_stack.num_layers(unscanned) == 2
  back = layer_stack.unstack(stacked)
  assert jax.tree.structure(back) == jax.tree.structure(unscanned)
  jax.tree.map(np.testing.assert_array_equal, back, unscanned)
  np.testing.assert_array_equal(  # layer 1 is row 1 of the stack
      stacked['Transformer']['encoderblock']['LayerNorm_1']['scale'][1],
      unscanned['Transformer']['encoderblock_1']['LayerNorm_1']['scale'],
  )
  numpy_tree = jax.tree.map(np.asarray, unscanned)
  assert all(isinstance(x, np.ndarray) for x in jax.tree.leaves(layer_stack.stack(numpy_tree)))


@pytest.mark.parametrize('classifier', ['token', 'map'])
@pytest.mark.slow
def test_scanned_logits_and_gradients_equal_unscanned(classifier):
  model = _model(classifier)
  params = _params(classifier)
  loss, grads = _grads(model, params, train=False)
  scanned = _model(classifier, scan_layers=True)
  loss_s, grads_s = _grads(scanned, layer_stack.stack(params), train=False)
  np.testing.assert_allclose(loss_s, loss, rtol=1e-5)
  _assert_trees_close(grads_s, layer_stack.stack(grads), 1e-5)
  np.testing.assert_allclose(
      scanned.apply({'params': layer_stack.stack(params)}, X, train=False),
      model.apply({'params': params}, X, train=False),
      atol=1e-5,
      rtol=0,
  )


@pytest.mark.slow
def test_scanned_dropout_draws_a_new_mask_per_layer():
  scanned = _model(scan_layers=True, dropout_rate=0.5)
  params = layer_stack.stack(_params())
  _, state = scanned.apply(
      {'params': params},
      X,
      train=True,
      rngs={'dropout': jax.random.PRNGKey(3)},
      capture_intermediates=lambda mdl, _: isinstance(mdl, flax.linen.Dropout),
      mutable=['intermediates'],
  )
  out = state['intermediates']['Transformer']['encoderblock']['MlpBlock_0']['Dropout_0']
  kept = np.asarray(out['__call__'][0]) != 0  # [layers, batch, tokens, mlp]
  assert kept.shape == (2, 2, 17, 32)
  assert 0.3 < kept.mean() < 0.7
  assert (kept[0] != kept[1]).mean() > 0.3  # independent masks differ in half the entries


# Each policy once, each block layout once: the policy is passed through unchanged whether
# the blocks are looped or scanned (the jaxpr check below sees it in both layouts).
@pytest.mark.parametrize('remat,scan_layers', [('full', False), ('dots', True)])
@pytest.mark.slow
def test_remat_gives_the_same_gradients(remat, scan_layers):
  """Recomputing in the backward pass changes memory, not numbers (dropout on, same keys)."""
  plain = _model(scan_layers=scan_layers)
  params = _params()
  params = layer_stack.to_layout(params, scan_layers)
  loss, grads = _grads(plain, params, train=True)
  rematted = _model(scan_layers=scan_layers, remat=remat)
  loss_r, grads_r = _grads(rematted, params, train=True)
  np.testing.assert_allclose(loss_r, loss, rtol=1e-6)
  _assert_trees_close(grads_r, grads, 1e-6)
  policy = {
      'full': jax.checkpoint_policies.nothing_saveable,
      'dots': jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
  }[remat]
  forward = jax.make_jaxpr(
      lambda p: rematted.apply(
          {'params': p}, X, train=True, rngs={'dropout': jax.random.PRNGKey(7)}
      )
  )(params)
  # The block really runs under jax.checkpoint: once inside the scan, else once per layer.
  assert _remat_policies(forward.jaxpr) == [policy] * (1 if scan_layers else 2)


def _remat_policies(jaxpr):
  """The `policy` of every jax.checkpoint in a jaxpr, nested ones (scan, jit) included."""
  found = []
  for eqn in jaxpr.eqns:
    if 'policy' in eqn.params:
      found.append(eqn.params['policy'])
    for value in eqn.params.values():
      for sub in value if isinstance(value, (tuple, list)) else [value]:
        inner = getattr(sub, 'jaxpr', sub)
        if hasattr(inner, 'eqns'):
          found += _remat_policies(inner)
  return found


def test_bad_remat_and_scan_values_are_clear_errors():
  with pytest.raises(ValueError, match=r"transformer.remat='dot' is not one of"):
    _model(remat='dot').init(jax.random.PRNGKey(0), X, train=False)
  with pytest.raises(ValueError, match='transformer.scan_layers=1 must be True or False'):
    _model(scan_layers=1).init(jax.random.PRNGKey(0), X, train=False)
