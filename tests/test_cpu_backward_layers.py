"""vit_jax/models/cpu_backward_layers.py against the Flax layers it replaces: same parameters from
the same rng, same outputs, and gradients equal to Flax's autodiff."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vit_jax.models import attention_layer
from vit_jax.models import cpu_backward_layers

WIDTH, HEADS = 16, 2


def _inputs(shape=(3, 7, WIDTH), seed=0):
  return jnp.asarray(np.random.default_rng(seed).standard_normal(shape), jnp.float32)


def _flax_attention(**kwargs):
  return nn.MultiHeadDotProductAttention(
      num_heads=HEADS,
      kernel_init=nn.initializers.xavier_uniform(),
      broadcast_dropout=False,
      attention_fn=attention_layer.make_attention_fn(),
      **kwargs,
  )


def _ours_attention(**kwargs):
  return cpu_backward_layers.MultiHeadDotProductAttention(
      num_heads=HEADS, attention_fn=attention_layer.make_attention_fn(), **kwargs
  )


PAIRS = {
    'layer_norm': (
        lambda: nn.LayerNorm(epsilon=1e-6),
        lambda: cpu_backward_layers.LayerNorm(epsilon=1e-6),
    ),
    'layer_norm_plain': (  # DiT's: no parameters, two-pass variance
        lambda: nn.LayerNorm(1e-6, use_bias=False, use_scale=False, use_fast_variance=False),
        lambda: cpu_backward_layers.LayerNorm(
            1e-6, use_bias=False, use_scale=False, use_fast_variance=False
        ),
    ),
    'dense_wide': (
        lambda: nn.Dense(
            3 * WIDTH,
            kernel_init=nn.initializers.xavier_uniform(),
            bias_init=nn.initializers.normal(1e-6),
        ),
        lambda: cpu_backward_layers.Dense(
            3 * WIDTH,
            kernel_init=nn.initializers.xavier_uniform(),
            bias_init=nn.initializers.normal(1e-6),
        ),
    ),
    'dense_narrow': (lambda: nn.Dense(4), lambda: cpu_backward_layers.Dense(4)),
    'attention': (_flax_attention, _ours_attention),
}


def _apply(module, params, x):
  if isinstance(module, nn.MultiHeadDotProductAttention):
    return module.apply(params, x, x)
  return module.apply(params, x)


@pytest.mark.parametrize('name', sorted(PAIRS))
@pytest.mark.slow
def test_same_parameters_outputs_and_gradients_as_flax(name):
  make_flax, make_ours = PAIRS[name]
  flax_layer, ours = make_flax(), make_ours()
  x = _inputs()
  rng = jax.random.key(1)
  flax_params = flax_layer.init(rng, x, x) if name == 'attention' else flax_layer.init(rng, x)
  params = ours.init(rng, x)
  assert jax.tree.map(jnp.shape, params) == jax.tree.map(jnp.shape, flax_params)
  jax.tree.map(np.testing.assert_array_equal, params, flax_params)
  # Non-trivial parameters, so that every gradient term matters.
  params = jax.tree.map(lambda p: p + 0.3 * _inputs(p.shape, seed=p.size), params)
  np.testing.assert_allclose(
      ours.apply(params, x), _apply(flax_layer, params, x), rtol=1e-5, atol=1e-5
  )
  cotangent = _inputs(ours.apply(params, x).shape, seed=2)
  loss = lambda layer, p, x: jnp.sum(_apply(layer, p, x) * cotangent)
  got = jax.jit(jax.grad(lambda p, x: loss(ours, p, x), argnums=(0, 1)))(params, x)
  want = jax.grad(lambda p, x: loss(flax_layer, p, x), argnums=(0, 1))(params, x)
  for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
    np.testing.assert_allclose(g, w, rtol=2e-4, atol=2e-5)


def test_bfloat16_compute_keeps_float32_parameter_gradients():
  ours = cpu_backward_layers.Dense(8, dtype=jnp.bfloat16)
  x = _inputs((4, 5, WIDTH))
  params = ours.init(jax.random.key(0), x)
  grads = jax.grad(lambda p: jnp.sum(ours.apply(p, x).astype(jnp.float32)))(params)
  assert jax.tree.map(lambda g: g.dtype, grads) == jax.tree.map(lambda p: p.dtype, params)
  np.testing.assert_allclose(grads['params']['bias'], np.full(8, 20.0), rtol=1e-2)
  norm = cpu_backward_layers.LayerNorm(dtype=jnp.bfloat16)
  norm_params = norm.init(jax.random.key(0), x.astype(jnp.bfloat16))
  y = norm.apply(norm_params, x.astype(jnp.bfloat16))
  assert y.dtype == jnp.bfloat16
  np.testing.assert_allclose(y.astype(jnp.float32), nn.LayerNorm().apply(norm_params, x), atol=3e-2)


def test_sown_attention_weights_and_dropout_match_flax():
  x = _inputs()
  rngs = {'params': jax.random.key(0), 'dropout': jax.random.key(5)}
  flax_layer = _flax_attention(dropout_rate=0.3, deterministic=False)
  ours = _ours_attention(dropout_rate=0.3, deterministic=False)
  params = ours.init(rngs, x)
  got, got_state = ours.apply(
      params, x, sow_weights=True, rngs={'dropout': rngs['dropout']}, mutable=['intermediates']
  )
  want, want_state = flax_layer.apply(
      params, x, x, sow_weights=True, rngs={'dropout': rngs['dropout']}, mutable=['intermediates']
  )
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
  jax.tree.map(np.testing.assert_array_equal, got_state, want_state)


@pytest.mark.parametrize('scan_layers', [False, True])
@pytest.mark.slow
def test_vit_with_grads_as_dots_equals_the_flax_layers_model(scan_layers):
  """The whole model both ways: the same parameters from the same rng, the same logits, and
  the same gradients of a training loss (dropout on), scanned or not."""
  from vit_jax.configs import vit as vit_configs
  from vit_jax.models import vit

  model_config = vit_configs.model_config('vit4').to_dict()
  model_config['transformer'].update(
      num_layers=2, scan_layers=scan_layers, dropout_rate=0.1, attention_dropout_rate=0.1
  )
  images = _inputs((2, 8, 8, 1), seed=3)
  models = {}
  for grads_as_dots in (False, True):
    config = dict(
        model_config, transformer=dict(model_config['transformer'], grads_as_dots=grads_as_dots)
    )
    models[grads_as_dots] = vit.VisionTransformer(num_classes=5, **config)
  params = {k: m.init(jax.random.key(0), images, train=False) for k, m in models.items()}
  jax.tree.map(np.testing.assert_array_equal, params[True], params[False])
  params = jax.tree.map(lambda p: p + 0.1 * _inputs(p.shape, seed=p.size), params[False])

  def loss(model, p):
    logits = model.apply(p, images, train=True, rngs={'dropout': jax.random.key(7)})
    return jnp.sum(jax.nn.log_softmax(logits)[:, 0])

  np.testing.assert_allclose(
      models[True].apply(params, images, train=False),
      models[False].apply(params, images, train=False),
      rtol=1e-5,
      atol=1e-5,
  )
  for grads_as_dots, model in models.items():  # each model is the one it claims to be
    jaxpr = str(jax.make_jaxpr(jax.grad(lambda p, m=model: loss(m, p)))(params))
    assert ('optimization_barrier' in jaxpr) == grads_as_dots
  got = jax.jit(jax.grad(lambda p: loss(models[True], p)))(params)
  want = jax.jit(jax.grad(lambda p: loss(models[False], p)))(params)
  jax.tree.map(lambda g, w: np.testing.assert_allclose(g, w, rtol=2e-4, atol=2e-5), got, want)
