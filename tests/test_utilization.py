"""utilization: FLOPs per step, achieved TFLOP/s per device and MFU of a compiled step."""

import os

import jax
from jax.experimental import topologies
import jax.numpy as jnp
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
import numpy as np
import pytest

from vit_jax.perf import utilization

for _key, _value in (
    ('TPU_SKIP_MDS_QUERY', '1'),
    ('TPU_WORKER_HOSTNAMES', 'localhost'),
    ('TPU_ACCELERATOR_TYPE', 'v5litepod-4'),
):
  os.environ.setdefault(_key, _value)  # quiet libtpu's start-up probes


def _matmul_step(devices):
  """A data-parallel matmul over `devices`: 2 * 512 * 256 * 128 FLOPs in all."""
  mesh = jax.sharding.Mesh(np.array(devices), ('d',))
  args = (
      jax.ShapeDtypeStruct((512, 256), jnp.bfloat16, sharding=NamedSharding(mesh, P('d'))),
      jax.ShapeDtypeStruct((256, 128), jnp.bfloat16, sharding=NamedSharding(mesh, P())),
  )
  return jax.jit(lambda x, w: x @ w).lower(*args).compile()


def test_mfu_on_a_v5e_slice():
  devices = topologies.get_topology_desc(topology_name='v5e:2x2', platform='tpu').devices
  flops = utilization.StepFlops(_matmul_step(devices), devices)
  total = 2 * 512 * 256 * 128
  assert flops.per_step == total and flops.per_device == total // 4
  scalars = flops.scalars(steps=10, seconds=2.0)
  per_device_rate = total / 4 * 10 / 2.0
  assert scalars == pytest.approx(
      {
          'flops_per_step': total,
          'tflops_per_sec_per_device': per_device_rate / 1e12,
          'mfu': per_device_rate / 197e12,
      }
  )


def test_cpu_reports_no_mfu():
  flops = utilization.StepFlops(_matmul_step(jax.devices()[:8]), jax.devices()[:8])
  assert set(flops.scalars(steps=1, seconds=1.0)) == {'flops_per_step', 'tflops_per_sec_per_device'}
