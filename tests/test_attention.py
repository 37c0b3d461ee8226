"""Every attention schedule against the dense reference: outputs, gradients, HLO, edge cases."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from vit_jax import attention
from vit_jax.models import VisionTransformer

AUTO = jax.sharding.AxisType.Auto


def _mesh(seq, data=None):
  data = data or 8 // seq
  return jax.make_mesh((data, seq), ('data', 'seq'), axis_types=(AUTO, AUTO))


def _inputs(batch, length, heads, dim=8, dtype=jnp.float32, seed=0):
  keys = jax.random.split(jax.random.PRNGKey(seed), 4)
  return [jax.random.normal(k, (batch, length, heads, dim)).astype(dtype) for k in keys]


def _key_mask(batch, length):
  valid = jnp.array([length, max(length // 2, 1)] * (batch // 2))
  return jnp.arange(length)[None, None, None, :] < valid[:, None, None, None]


def _value_and_grads(impl, q, k, v, cotangent, mask, **kw):
  def loss(q, k, v):
    out = attention.dot_product_attention(q, k, v, impl=impl, mask=mask, **kw)
    return jnp.sum(out.astype(jnp.float32) * cotangent)

  return jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2)))(q, k, v)


def _out_and_grads(impl, q, k, v, cotangent, mask, **kw):
  """Output and gradients of <out, cotangent> w.r.t. q, k, v."""
  fn = lambda q, k, v: attention.dot_product_attention(q, k, v, impl=impl, mask=mask, **kw)
  out, vjp = jax.jit(lambda q, k, v: jax.vjp(fn, q, k, v))(q, k, v)
  return (out,) + vjp(cotangent.astype(out.dtype))


# (impl, seq axis size, length, heads, masked): odd lengths and +1 class-token lengths,
# heads 3 and 4, every seq size, with and without a key mask.
GRID = [
    ('blockwise', 1, 7, 3, False),
    ('blockwise', 1, 33, 4, True),
    ('blockwise', 1, 17, 3, True),
    ('ring', 1, 7, 3, True),
    ('ring', 2, 33, 4, True),
    ('ring', 4, 17, 3, False),
    ('ring', 8, 65, 4, True),
    ('ring', 8, 16, 3, False),
    ('allgather', 2, 17, 3, True),
    ('allgather', 4, 7, 4, True),
    ('allgather', 8, 33, 4, False),
    ('ulysses', 1, 17, 3, True),
    ('ulysses', 2, 33, 4, True),
    ('ulysses', 4, 17, 4, False),
    ('ulysses', 8, 33, 8, True),
]


@pytest.mark.parametrize('impl,seq,length,heads,masked', GRID)
@pytest.mark.slow
def test_schedule_equals_dense(impl, seq, length, heads, masked):
  batch = 2
  q, k, v, cotangent = _inputs(batch, length, heads)
  mask = _key_mask(batch, length) if masked else None
  expected = _out_and_grads('dense', q, k, v, cotangent, mask)
  with jax.set_mesh(_mesh(seq)):
    got = _out_and_grads(impl, q, k, v, cotangent, mask, block_size=4)
  for name, g, e in zip(('out', 'dq', 'dk', 'dv'), got, expected):
    np.testing.assert_allclose(g, e, atol=1e-5, rtol=1e-5, err_msg=f'{impl} {name}')


@pytest.mark.parametrize('impl,seq', [('blockwise', 1), ('ring', 4), ('ulysses', 2)])
def test_bfloat16_against_float32_reference(impl, seq):
  q, k, v, cotangent = _inputs(2, 33, 4)
  expected = _out_and_grads('dense', q, k, v, cotangent, None)
  to16 = lambda x: x.astype(jnp.bfloat16)
  with jax.set_mesh(_mesh(seq)):
    got = _out_and_grads(impl, to16(q), to16(k), to16(v), cotangent, None, block_size=8)
  for g, e in zip(got, expected):
    assert g.dtype == jnp.bfloat16
    np.testing.assert_allclose(np.asarray(g, np.float32), e, atol=2e-2, rtol=2e-2)


def _hlo(impl, seq, length, block):
  q, k, v, _ = _inputs(2, length, 4)
  fn = lambda q, k, v: jax.grad(
      lambda q, k, v: jnp.sum(
          attention.dot_product_attention(q, k, v, impl=impl, block_size=block)
      ),
      argnums=(0, 1, 2),
  )(q, k, v)
  with jax.set_mesh(_mesh(seq)):
    return jax.jit(fn).lower(q, k, v).compile().as_text()


def test_compiled_hlo_uses_the_right_collectives_and_no_square_buffer():
  length = 256
  square = f'{length},{length}]'
  assert square in _hlo('dense', 1, length, 32)  # the reference does build [L, L]
  blockwise = _hlo('blockwise', 1, length, 32)
  assert square not in blockwise
  ring = _hlo('ring', 4, length, 32)
  assert 'collective-permute' in ring and square not in ring
  assert f'{length // 4},{length // 4}]' not in ring  # nor a local [L/n, L/n] one
  assert 'all-gather' in _hlo('allgather', 4, length, 32)
  assert 'all-to-all' in _hlo('ulysses', 4, length, 32)


@pytest.mark.parametrize(
    'impl,seq', [('dense', 1), ('blockwise', 1), ('ring', 2), ('allgather', 2), ('ulysses', 2)]
)
def test_fully_masked_rows_and_large_logits_stay_finite(impl, seq):
  q, k, v, cotangent = _inputs(2, 16, 4)
  mask = jnp.arange(16)[None, None, None, :] < jnp.array([16, 0])[:, None, None, None]
  with jax.set_mesh(_mesh(seq)):
    results = _value_and_grads(
        impl,
        30.0 * q,
        30.0 * k,
        v,
        cotangent,
        mask,
        **({} if impl == 'dense' else {'block_size': 4}),
    )
  for leaf in jax.tree.leaves(results):
    assert np.all(np.isfinite(leaf)), impl


def test_impossible_setups_fail_fast():
  q = jnp.zeros((2, 8, 3, 4))
  with pytest.raises(ValueError, match='is not one of'):
    attention.dot_product_attention(q, q, q, impl='flash')
  with pytest.raises(ValueError, match='block_size'):
    attention.dot_product_attention(q, q, q, impl='blockwise', block_size=0)
  with pytest.raises(ValueError, match="'seq'"):
    attention.dot_product_attention(q, q, q, impl='ring')
  with jax.set_mesh(jax.make_mesh((8,), ('data',), axis_types=(AUTO,))):
    with pytest.raises(ValueError, match="'seq'"):
      attention.dot_product_attention(q, q, q, impl='allgather')
  with jax.set_mesh(_mesh(2)):
    with pytest.raises(ValueError, match='divisible'):
      attention.dot_product_attention(q, q, q, impl='ulysses')
  with pytest.raises(ValueError, match='attention_dropout_rate'):
    attention.dot_product_attention(
        q,
        q,
        q,
        impl='blockwise',
        dropout_rate=0.1,
        deterministic=False,
        dropout_rng=jax.random.PRNGKey(0),
    )


def _pit(impl):
  transformer = dict(
      mlp_dim=32,
      num_heads=2,
      num_layers=1,
      dropout_rate=0.0,
      attention_dropout_rate=0.0,
      attention={'impl': impl, 'block_size': 128},
  )
  return VisionTransformer(
      num_classes=5,
      patches={'size': (1, 1)},
      hidden_size=16,
      transformer=transformer,
      classifier='token',
  )


@pytest.mark.slow
def test_pit_32x32_loss_and_gradients_equal_across_schedules():
  """1024 pixel tokens + class token = 1025: padding and masking inside every schedule."""
  images = jax.random.normal(jax.random.PRNGKey(0), (2, 32, 32, 3))
  labels = jax.nn.one_hot(jnp.array([1, 3]), 5)
  params = _pit('dense').init(jax.random.PRNGKey(1), images, train=False)['params']
  params = jax.tree.map(
      lambda p: p + 0.05 * jax.random.normal(jax.random.PRNGKey(2), p.shape), params
  )

  def loss_and_grads(impl):
    model = _pit(impl)
    loss = lambda p: optax.softmax_cross_entropy(
        model.apply({'params': p}, images, train=False), labels
    ).mean()
    return jax.jit(jax.value_and_grad(loss))(params)

  expected_loss, expected_grads = loss_and_grads('dense')
  for impl, seq in (('blockwise', 1), ('ring', 8), ('allgather', 4), ('ulysses', 2)):
    with jax.set_mesh(_mesh(seq)):
      loss, grads = loss_and_grads(impl)
    np.testing.assert_allclose(loss, expected_loss, atol=1e-5, rtol=1e-5, err_msg=impl)
    for g, e in zip(jax.tree.leaves(grads), jax.tree.leaves(expected_grads)):
      np.testing.assert_allclose(g, e, atol=1e-5, rtol=1e-5, err_msg=impl)
