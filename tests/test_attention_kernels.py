"""Fused kernels against the dense reference: Pallas TPU flash attention (in interpret mode
here), the sharded schedules on it, cuDNN's wiring, bfloat16 dense attention, impl='auto'."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vit_jax import attention
from vit_jax.attention import cudnn
from vit_jax.attention import select

AUTO = jax.sharding.AxisType.Auto


def _mesh(seq):
  return jax.make_mesh((8 // seq, seq), ('data', 'seq'), axis_types=(AUTO, AUTO))


def _inputs(length, heads=3, dim=8, batch=2, dtype=jnp.float32):
  keys = jax.random.split(jax.random.PRNGKey(length), 4)
  return [jax.random.normal(k, (batch, length, heads, dim)).astype(dtype) for k in keys]


def _key_mask(length):
  return (
      jnp.arange(length)[None, None, None, :]
      < jnp.array([length, length // 2 + 1])[:, None, None, None]
  )


def _out_and_grads(q, k, v, cotangent, **kw):
  fn = lambda q, k, v: attention.dot_product_attention(q, k, v, **kw)
  out, vjp = jax.jit(lambda q, k, v: jax.vjp(fn, q, k, v))(q, k, v)
  return (out,) + vjp(cotangent.astype(out.dtype))


def _assert_equal_to_dense(got, q, k, v, cotangent, mask, tol=1e-5):
  expected = _out_and_grads(q, k, v, cotangent, impl='dense', mask=mask)
  for name, g, e in zip(('out', 'dq', 'dk', 'dv'), got, expected):
    np.testing.assert_allclose(
        np.asarray(g, np.float32), np.asarray(e, np.float32), atol=tol, rtol=tol, err_msg=name
    )


def _count_pallas_calls(fn, *args):
  jaxpr = jax.make_jaxpr(fn)(*args)
  return str(jaxpr).count('pallas_call')


# (length, masked, block_size, seq, impl): +1 class-token lengths, padding to 128-lane tiles,
# several kernel blocks per sequence, every sharded schedule on the kernel.
CASES = [
    (17, True, 512, 1, 'pallas'),
    (257, False, 128, 1, 'pallas'),  # 256 pixels + class token: 3 blocks of 128
    (129, True, 128, 2, 'ring'),
    (65, True, 128, 4, 'allgather'),
    (33, False, 128, 2, 'ulysses'),
]


@pytest.mark.parametrize('length,masked,block_size,seq,impl', CASES)
@pytest.mark.slow
def test_pallas_kernel_equals_dense(length, masked, block_size, seq, impl):
  heads = 4 if impl == 'ulysses' else 3
  q, k, v, cotangent = _inputs(length, heads)
  mask = _key_mask(length) if masked else None
  kw = dict(impl=impl, block_size=block_size, mask=mask, kernel='pallas')
  with jax.set_mesh(_mesh(seq)):
    got = _out_and_grads(q, k, v, cotangent, **kw)
    calls = _count_pallas_calls(
        jax.grad(lambda q: attention.dot_product_attention(q, k, v, **kw).sum()), q
    )
  assert calls >= 3, f'{impl}: expected the forward and both backward kernels, got {calls}'
  _assert_equal_to_dense(got, q, k, v, cotangent, mask)


def test_pallas_without_a_mesh_and_in_bfloat16():
  q, k, v, cotangent = _inputs(130, dtype=jnp.bfloat16)
  got = _out_and_grads(q, k, v, cotangent, impl='pallas', block_size=128)
  assert got[0].dtype == jnp.bfloat16
  f32 = [x.astype(jnp.float32) for x in (q, k, v)]
  _assert_equal_to_dense(got, *f32, cotangent, None, tol=3e-2)


def test_sharded_schedules_use_the_kernel_only_when_asked():
  q, k, v, _ = _inputs(64)
  fn = lambda kernel: (
      lambda q: attention.dot_product_attention(q, k, v, impl='ring', block_size=16, kernel=kernel)
  )
  with jax.set_mesh(_mesh(2)):
    assert _count_pallas_calls(fn('xla'), q) == 0
    assert _count_pallas_calls(fn('auto'), q) == 0  # auto: the kernel on TPU only
    assert _count_pallas_calls(fn('pallas'), q) > 0
  with pytest.raises(ValueError, match='kernel'):
    attention.dot_product_attention(q, k, v, impl='ring', kernel='triton')


@pytest.mark.parametrize('masked', [False, True])
def test_cudnn_wiring_through_the_xla_implementation(masked):
  q, k, v, cotangent = _inputs(17)
  mask = _key_mask(17) if masked else None
  fn = lambda q, k, v: cudnn.cudnn_attention(q, k, v, mask, implementation='xla')
  out, vjp = jax.vjp(fn, q, k, v)
  _assert_equal_to_dense((out,) + vjp(cotangent), q, k, v, cotangent, mask)


def test_cudnn_off_gpu_is_a_clear_error():
  q = jnp.zeros((2, 8, 3, 4), jnp.bfloat16)
  with pytest.raises(ValueError, match='needs an NVIDIA GPU'):
    attention.dot_product_attention(q, q, q, impl='cudnn')


def test_dense_bfloat16_runs_both_matmuls_in_bfloat16():
  q, k, v, cotangent = _inputs(33, heads=4, dtype=jnp.bfloat16)
  fn = lambda q, k, v: attention.dot_product_attention(q, k, v, impl='dense')
  jaxpr = jax.make_jaxpr(fn)(q, k, v)
  dots = [e for e in jaxpr.eqns if e.primitive.name == 'dot_general']
  assert len(dots) == 2
  logits = dots[0].outvars[0].aval
  assert logits.shape == (2, 4, 33, 33) and logits.dtype == jnp.bfloat16
  assert all(x.aval.dtype == jnp.bfloat16 for x in dots[1].invars)  # probabilities @ values
  f32 = [x.astype(jnp.float32) for x in (q, k, v)]
  _assert_equal_to_dense(
      _out_and_grads(q, k, v, cotangent, impl='dense'), *f32, cotangent, None, tol=3e-2
  )


def _abstract_mesh(platform, seq=1):
  device = jax.sharding.AbstractDevice(device_kind=platform, num_cores=None, platform=platform)
  return jax.sharding.AbstractMesh(
      (1, seq), ('data', 'seq'), axis_types=(AUTO, AUTO), abstract_device=device
  )


@pytest.mark.parametrize(
    'platform,length,dtype,expected',
    [
        ('cpu', 197, jnp.float32, 'dense'),
        ('cpu', 785, jnp.float32, 'dense'),
        ('cpu', 4097, jnp.float32, 'blockwise'),
        ('tpu', 197, jnp.bfloat16, 'dense'),
        ('tpu', 785, jnp.float32, 'pallas'),
        ('tpu', 50177, jnp.bfloat16, 'pallas'),
        ('gpu', 197, jnp.bfloat16, 'dense'),
        ('gpu', 4097, jnp.bfloat16, 'cudnn'),
        ('gpu', 4097, jnp.float32, 'blockwise'),
    ],
)
def test_auto_picks_per_platform_and_length(platform, length, dtype, expected):
  with jax.sharding.use_abstract_mesh(_abstract_mesh(platform)):
    assert attention.resolved_impl('auto', length, dtype) == expected
    assert attention.resolved_impl('auto', length, dtype, dropout_active=True) == 'dense'
    assert select.use_pallas_kernel('auto') == (platform == 'tpu')
  with jax.sharding.use_abstract_mesh(_abstract_mesh(platform, seq=4)):
    assert attention.resolved_impl('auto', length, dtype) == 'ring'


def test_auto_is_the_default_and_dense_on_this_cpu():
  q, k, v, cotangent = _inputs(17)
  got = _out_and_grads(q, k, v, cotangent)
  expected = _out_and_grads(q, k, v, cotangent, impl='dense')
  for g, e in zip(got, expected):
    np.testing.assert_array_equal(g, e)
