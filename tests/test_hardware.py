"""hardware: the chip behind a device kind or topology name, and the peak per device."""

import os

import jax
from jax.experimental import topologies
import pytest

from vit_jax.perf import hardware

for _key, _value in (
    ('TPU_SKIP_MDS_QUERY', '1'),
    ('TPU_WORKER_HOSTNAMES', 'localhost'),
    ('TPU_ACCELERATOR_TYPE', 'v5litepod-4'),
):
  os.environ.setdefault(_key, _value)  # quiet libtpu's start-up probes


@pytest.mark.parametrize(
    'topology,chip,per_device',
    [
        ('v5e:2x2', hardware.TPU_V5E, 197e12),
        ('v5p:2x2x1', hardware.TPU_V5P, 459e12),
        ('v6e:2x2', hardware.TPU_V6E, 918e12),
        # Compiled for per-core devices: two TensorCores share a chip's 275 TFLOP/s.
        ('v4:2x2x1', hardware.TPU_V4, 275e12 / 2),
    ],
)
def test_tpu_topologies_and_the_device_kinds_jax_reports(topology, chip, per_device):
  devices = topologies.get_topology_desc(topology_name=topology, platform='tpu').devices
  assert hardware.for_topology(topology) == chip
  assert hardware.for_device_kind(devices[0].device_kind) == chip
  assert hardware.peak_flops_per_device(devices) == per_device


@pytest.mark.parametrize(
    'kind,chip',
    [
        ('TPU v5 lite', hardware.TPU_V5E),
        ('TPU v5e', hardware.TPU_V5E),
        ('TPU v5', hardware.TPU_V5P),
        ('tpu_v5p', hardware.TPU_V5P),
        ('TPU v6 lite', hardware.TPU_V6E),
        ('TPU v4', hardware.TPU_V4),
        ('NVIDIA A100-SXM4-40GB', hardware.A100_40GB),
        ('NVIDIA A100-PCIE-40GB', hardware.A100_40GB),
        ('NVIDIA A100-SXM4-80GB', hardware.A100_80GB_SXM),
        ('NVIDIA A100 80GB PCIe', hardware.A100_80GB_PCIE),
        ('NVIDIA H100 80GB HBM3', hardware.H100_SXM),
        ('NVIDIA H100 PCIe', hardware.H100_PCIE),
        ('NVIDIA H200', hardware.H200_SXM),
        # Unknown parts give no peak rather than a neighbour's.
        ('cpu', None),
        ('TPU v3', None),
        ('TPU v4 lite', None),
        ('TPU7x', None),
        ('NVIDIA H100 NVL', None),
        ('NVIDIA L4', None),
    ],
)
def test_device_kind_spellings(kind, chip):
  assert hardware.for_device_kind(kind) == chip


def test_topology_prefixes():
  assert hardware.for_topology('v5litepod-16') == hardware.TPU_V5E
  assert hardware.for_topology('V5P:4x4x4') == hardware.TPU_V5P
  assert hardware.for_topology('v6e-8') == hardware.TPU_V6E
  assert hardware.for_topology('v3:2x2') is None and hardware.for_topology('v40') is None


def test_cpu_has_no_known_peak():
  assert hardware.peak_flops_per_device(jax.devices()) is None
  assert hardware.devices_per_chip(jax.devices()) == 1
