"""hlo_flops: FLOPs counted from optimized HLO against analytic counts and XLA's own cost
analysis (on loop-free programs, where it is right), on CPU and compiled for a TPU v5e."""

import os
import re

import jax
from jax.experimental import topologies
from jax.experimental.pallas.ops.tpu import flash_attention
import jax.numpy as jnp
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
import numpy as np
import pytest

from vit_jax.perf import hlo_flops

for _key, _value in (
    ('TPU_SKIP_MDS_QUERY', '1'),
    ('TPU_WORKER_HOSTNAMES', 'localhost'),
    ('TPU_ACCELERATOR_TYPE', 'v5litepod-4'),
):
  os.environ.setdefault(_key, _value)  # quiet libtpu's start-up probes


def _compile(f, *shapes, dtype=jnp.float32):
  return jax.jit(f).lower(*[jax.ShapeDtypeStruct(s, dtype) for s in shapes]).compile()


@pytest.fixture(scope='module')
def v5e_mesh():
  """Compile-only TPU v5e devices (2x2 chips), as one mesh axis 'd'."""
  devices = topologies.get_topology_desc(topology_name='v5e:2x2', platform='tpu').devices
  return jax.sharding.Mesh(np.array(devices), ('d',))


def _chain(x, a, b, c, w):
  y = jnp.tanh(jnp.tanh(x @ a) @ b) @ c
  return jnp.einsum('bij,bjk->bik', w, w).sum() + y  # plus a batched dot


def _chain_flops():
  return 2 * 24 * (40 * 56 + 56 * 72 + 72 * 8) + 2 * 3 * 16 * 16 * 16


def test_matmul_chain_equals_the_analytic_count_and_cost_analysis():
  compiled = _compile(_chain, (24, 40), (40, 56), (56, 72), (72, 8), (3, 16, 16))
  counted = hlo_flops.count(compiled)
  assert counted.flops == _chain_flops()
  assert counted.uncounted == () and counted.loops_without_trip_count == ()
  assert counted.flops == pytest.approx(compiled.cost_analysis()['flops'], rel=0.02)


def _conv(x, k):
  """Stride 2, SAME padding (counted positions exclude it), two feature groups."""
  return jax.lax.conv_general_dilated(
      x, k, (2, 2), 'SAME', feature_group_count=2, dimension_numbers=('NHWC', 'HWIO', 'NHWC')
  )


def test_convolutions_and_their_gradients_equal_cost_analysis():
  for f in (_conv, jax.grad(lambda x, k: _conv(x, k).sum(), argnums=(0, 1))):
    compiled = _compile(f, (2, 15, 15, 8), (3, 3, 4, 6))
    assert hlo_flops.count(compiled).flops == pytest.approx(
        compiled.cost_analysis()['flops'], rel=0.01
    )
  # A patch embedding (stride = kernel, no padding): 2 * patches * (16*16*3) * 32.
  patchify = lambda x, k: jax.lax.conv_general_dilated(
      x, k, (16, 16), 'VALID', dimension_numbers=('NHWC', 'HWIO', 'NHWC')
  )
  compiled = _compile(patchify, (2, 64, 64, 3), (16, 16, 3, 32))
  assert hlo_flops.count(compiled).flops == 2 * 2 * 16 * (16 * 16 * 3) * 32


def _scan_matmuls(x, ws):
  return jax.lax.scan(lambda c, w: (jnp.tanh(c @ w), None), x, ws)[0]


def test_scan_counts_trip_count_times_its_body_where_cost_analysis_counts_it_once():
  compiled = _compile(_scan_matmuls, (8, 32), (12, 32, 32))
  body = 2 * 8 * 32 * 32
  assert hlo_flops.count(compiled).flops == 12 * body
  assert compiled.cost_analysis()['flops'] < 2 * body  # why this module exists

  def nested(x, ws):  # a scan of 3 scans of 12, and a cond whose costlier branch counts
    x = jax.lax.scan(lambda c, _: (_scan_matmuls(c, ws), None), x, None, length=3)[0]
    return jax.lax.cond(x.sum() > 0, lambda y: y @ ws[0] @ ws[1], lambda y: y, x)

  compiled = _compile(nested, (8, 32), (12, 32, 32))
  assert hlo_flops.count(compiled).flops == 36 * body + 2 * body


def test_a_scan_without_xla_trip_count_is_counted_from_its_loop_condition():
  """TPU loop transformations (e.g. the ring schedule's backward) drop known_trip_count."""
  text = _compile(_scan_matmuls, (8, 32), (12, 32, 32)).as_text()
  stripped = re.sub(r'"known_trip_count":\{"n":"\d+"\},?', '', text)
  assert 'known_trip_count' not in stripped
  counted = hlo_flops.count_text(stripped)
  assert counted.flops == 12 * 2 * 8 * 32 * 32 and not counted.loops_without_trip_count


def test_a_data_dependent_loop_counts_its_body_once_and_says_so():
  def f(x, w):
    return jax.lax.while_loop(lambda c: jnp.sum(c) < 1e6, lambda c: jnp.abs(c @ w) + 1.0, x)

  counted = hlo_flops.count(_compile(f, (8, 32), (32, 32)))
  assert counted.flops == 2 * 8 * 32 * 32
  assert len(counted.loops_without_trip_count) == 1
  assert 'trip count' in hlo_flops.describe(counted)


def test_an_spmd_program_counts_one_device():
  mesh = jax.make_mesh((8,), ('d',), devices=jax.devices()[:8])
  shard = NamedSharding(mesh, P('d'))
  args = (
      jax.ShapeDtypeStruct((64, 48), jnp.float32, sharding=shard),
      jax.ShapeDtypeStruct((48, 40), jnp.float32, sharding=NamedSharding(mesh, P())),
  )
  compiled = jax.jit(lambda x, w: x @ w).lower(*args).compile()
  assert hlo_flops.count(compiled).flops == 2 * 64 * 48 * 40 // 8


def test_tpu_matmul_chain_equals_cost_analysis(v5e_mesh):
  specs = (P('d'), P(), P(), P(), P())
  shapes = ((24 * 4, 40), (40, 56), (56, 72), (72, 8), (3, 16, 16))
  args = [
      jax.ShapeDtypeStruct(s, jnp.bfloat16, sharding=NamedSharding(v5e_mesh, p))
      for s, p in zip(shapes, specs)
  ]
  compiled = jax.jit(_chain).lower(*args).compile()
  counted = hlo_flops.count(compiled)
  assert counted.flops == _chain_flops()  # per device: 24 of the 96 rows
  assert counted.flops == pytest.approx(compiled.cost_analysis()['flops'], rel=0.02)


def test_pallas_flash_attention_counts_its_model_flops_forward_and_backward(v5e_mesh):
  b, h, length, d = 8, 2, 256, 128  # 2 examples per device

  def attention(q, k, v):  # Mosaic kernels are not auto-partitioned: shard_map them
    return jax.shard_map(
        lambda q, k, v: flash_attention.flash_attention(q, k, v),
        mesh=v5e_mesh,
        in_specs=P('d'),
        out_specs=P('d'),
        check_vma=False,
    )(q, k, v)

  args = [
      jax.ShapeDtypeStruct(
          (b, h, length, d), jnp.bfloat16, sharding=NamedSharding(v5e_mesh, P('d'))
      )
  ] * 3
  forward = 4 * (b // 4) * h * length * length * d
  loss = lambda q, k, v: attention(q, k, v).astype(jnp.float32).sum()
  with jax.default_matmul_precision('default'):  # conftest's 'highest' is no Mosaic bf16 dot
    compiled = jax.jit(attention).lower(*args).compile()
    backward = jax.jit(jax.grad(loss, argnums=(0, 1, 2))).lower(*args).compile()
  assert hlo_flops.count(compiled).flops == forward
  text = backward.as_text()
  assert 'flash_mha_bwd_dkv' in text and 'flash_mha_bwd_dq' in text
  counted = hlo_flops.count_text(text)
  assert counted.flops == 3 * forward and counted.uncounted == ()  # backward = 2x forward
  # XLA's cost analysis sees the forward kernel's estimate and nothing of the backward.
  assert backward.cost_analysis()['flops'] < 1.1 * forward


def test_gpu_gemms_count_and_unknown_custom_calls_are_named_not_guessed():
  """XLA:GPU's cuBLAS GEMMs (the format of its gemm_rewriter output) count like the dot they
  replace; a kernel it cannot see into counts 0 and is named."""
  gemm_config = (
      '{"gemm_backend_config":{"alpha_real":1,"beta":0,"dot_dimension_numbers":{'
      '"lhs_contracting_dimensions":["0"],"rhs_contracting_dimensions":["0"],'
      '"lhs_batch_dimensions":[],"rhs_batch_dimensions":[]},"epilogue":"DEFAULT"}}'
  )
  text = f"""HloModule m
ENTRY %main (p: f32[6,4], q: f32[6,5]) -> f32[4,5] {{
  %p = f32[6,4]{{1,0}} parameter(0)
  %q = f32[6,5]{{1,0}} parameter(1)
  %k = f32[6,4]{{1,0}} custom-call(%p), custom_call_target="tpu_custom_call"
  %c = f32[6,4]{{1,0}} custom-call(f32[6,4]{{1,0}} %k), custom_call_target="__cudnn$convForward"
  %g = (f32[4,5]{{1,0}}, s8[1024]{{0}}) custom-call(f32[6,4]{{1,0}} %c, f32[6,5]{{1,0}} %q), custom_call_target="__cublas$gemm", backend_config={gemm_config}
  ROOT %r = f32[4,5]{{1,0}} get-tuple-element(%g), index=0
}}
"""
  counted = hlo_flops.count_text(text)
  assert counted.flops == 2 * 4 * 5 * 6
  assert counted.uncounted == ('__cudnn$convForward', 'k')
