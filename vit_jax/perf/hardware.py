"""Accelerator peaks per chip: bf16 dense FLOP/s, HBM bytes and HBM bandwidth.

Looked up by `device.device_kind` (as jax reports it) or by the prefix of a TPU topology name
(`jax.experimental.topologies.get_topology_desc(topology_name='v5e:2x2', ...)`). Unknown
kinds (CPU, other GPUs) give None: no MFU is reported rather than a made-up one.

A jax device can be a part of a chip (a TensorCore of a TPU v4 compiled for per-core
devices, TPU v2/v3 cores): `peak_flops_per_device` divides a chip's peak among the devices
that share it.
"""

import collections
from collections.abc import Sequence
import dataclasses
import re

GIB = 2**30


@dataclasses.dataclass(frozen=True)
class Chip:
  name: str
  peak_flops: float  # bf16 dense matrix FLOP/s (no structured sparsity)
  hbm_bytes: int
  hbm_bytes_per_sec: float


# Sources (vendor figures, checked 2026): Google Cloud TPU system architecture pages
# https://cloud.google.com/tpu/docs/{v4,v5e,v5p,v6e}; NVIDIA datasheets for A100 (Ampere
# A100 datasheet, "BFLOAT16 Tensor Core 312 TFLOPS", 624 with sparsity), H100 (H100 Tensor
# Core GPU datasheet, SXM: BF16 1,979 TFLOPS with sparsity = 989 dense, 80 GB, 3.35 TB/s;
# PCIe: 1,513 sparse = 756 dense, 80 GB, 2 TB/s) and H200 (datasheet, SXM: same compute as
# H100 SXM, 141 GB HBM3e, 4.8 TB/s). Google writes TPU HBM sizes as "GB"/"GiB"
# interchangeably; the HBM stacks are binary-sized, so GiB is used here.
TPU_V4 = Chip('TPU v4', 275e12, 32 * GIB, 1200e9)  # docs: 275 TFLOPs, 32 GiB, 1200 GBps
TPU_V5E = Chip('TPU v5e', 197e12, 16 * GIB, 819e9)  # docs: 197 TFLOPs, 16 GB, 819 GBps
TPU_V5P = Chip('TPU v5p', 459e12, 95 * GIB, 2765e9)  # docs: 459 TFLOPs, 95 GB, 2765 GBps
TPU_V6E = Chip('TPU v6e', 918e12, 32 * GIB, 1638e9)  # docs: 918 TFLOPs, 32 GB, 1638 GBps
A100_40GB = Chip('NVIDIA A100 40GB', 312e12, 40 * 10**9, 1555e9)  # SXM4 and PCIe
A100_80GB_SXM = Chip('NVIDIA A100 80GB SXM', 312e12, 80 * 10**9, 2039e9)
A100_80GB_PCIE = Chip('NVIDIA A100 80GB PCIe', 312e12, 80 * 10**9, 1935e9)
H100_SXM = Chip('NVIDIA H100 SXM', 989e12, 80 * 10**9, 3350e9)
H100_PCIE = Chip('NVIDIA H100 PCIe', 756e12, 80 * 10**9, 2000e9)
H200_SXM = Chip('NVIDIA H200 SXM', 989e12, 141 * 10**9, 4800e9)

# Topology name prefixes as get_topology_desc takes them ('v5e:2x2', 'v4:2x2x1'); the
# Cloud accelerator-type spellings (v5litepod-8, v5p-8) are accepted too.
_TOPOLOGY_PREFIXES = (
    ('v5litepod', TPU_V5E),
    ('v5lite', TPU_V5E),
    ('v5e', TPU_V5E),
    ('v5p', TPU_V5P),
    ('v6e', TPU_V6E),
    ('v4', TPU_V4),
)


def _normal(text):
  return re.sub(r'[\s_\-]+', ' ', text.lower()).strip()


def for_device_kind(kind: str) -> Chip | None:
  """The chip of a jax `device_kind` ('TPU v5 lite', 'NVIDIA H100 80GB HBM3', ...), or None.

  jax reports TPU v5e as 'TPU v5 lite', v5p as 'TPU v5', v6e as 'TPU v6 lite'; CUDA devices
  by their marketing name ('NVIDIA A100-SXM4-80GB', 'NVIDIA A100 80GB PCIe', 'NVIDIA H100
  80GB HBM3' for the SXM part, 'NVIDIA H100 PCIe', 'NVIDIA H200').
  """
  k = _normal(kind)
  tpu = re.fullmatch(r'tpu ?(v\d+\w*)( lite| e| p)?', k)
  if tpu:
    version, variant = tpu.group(1), (tpu.group(2) or '').strip()
    if version in ('v5e', 'v5litepod') or (version == 'v5' and variant in ('lite', 'e')):
      return TPU_V5E
    if version in ('v5', 'v5p') and variant in ('', 'p'):
      return TPU_V5P
    if version in ('v6', 'v6e') and variant in ('lite', 'e', ''):
      return TPU_V6E
    if version == 'v4' and not variant:
      return TPU_V4
    return None
  if 'a100' in k:
    if '80gb' in k.replace(' ', ''):
      return A100_80GB_PCIE if 'pcie' in k else A100_80GB_SXM
    return A100_40GB
  if 'h100' in k:
    if 'pcie' in k:
      return H100_PCIE
    return None if 'nvl' in k else H100_SXM  # H100 NVL: a different part, not listed
  if 'h200' in k:
    return None if 'nvl' in k else H200_SXM
  return None


def for_topology(name: str) -> Chip | None:
  """The chip of a TPU topology name such as 'v5e:2x2' or 'v4:2x2x1', or None."""
  k = name.lower().strip()
  for prefix, chip in _TOPOLOGY_PREFIXES:
    if k.startswith(prefix) and not k[len(prefix) : len(prefix) + 1].isalnum():
      return chip
  return None


def devices_per_chip(devices: Sequence) -> int:
  """How many of these jax devices share one chip (TPU devices carry chip `coords`)."""
  chips = collections.Counter(
      (getattr(d, 'process_index', 0), tuple(getattr(d, 'coords', None) or (d.id,)))
      for d in devices
  )
  return max(chips.values()) if chips else 1


def peak_flops_per_device(devices: Sequence) -> float | None:
  """bf16 dense peak FLOP/s of one of `devices` (all of one kind), or None if unknown."""
  kinds = {d.device_kind for d in devices}
  if len(kinds) != 1:
    return None
  chip = for_device_kind(kinds.pop())
  return None if chip is None else chip.peak_flops / devices_per_chip(devices)
