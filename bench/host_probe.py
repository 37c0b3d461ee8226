"""A fixed measure of a host's speed, printed by the benches to compare hosts of one kind.

Hosts sold as the same 2-core machine differ: the PiT main job took 425 s on one and 680 s
on another, both idle. The probe is a float32 2048x2048 matmul through numpy (its BLAS, all
cores), best of 5, and the CPU's model and vector width. Between CPUs of one kind it tracks
the train step; across kinds it does not: an AVX-512 Xeon measured 400-409 GFLOP/s against an
AVX2 EPYC's 194-203, yet ran the same (old) PiT job only 1.1-1.3x faster. The slowest host
seen ran that job at 610 examples/s.
"""

import os
import time

import numpy as np


def matmul_gflops(size=2048, repeats=5):
  """GFLOP/s of the best of `repeats` float32 size x size matmuls."""
  a = np.random.default_rng(0).standard_normal((size, size), np.float32)
  best = float('inf')
  for _ in range(repeats):
    start = time.perf_counter()
    a @ a
    best = min(best, time.perf_counter() - start)
  return 2 * size**3 / best / 1e9


def cpu_kind():
  """'<model name>, AVX-512' / 'AVX2' / '' from /proc/cpuinfo (Linux), else ''."""
  try:
    with open('/proc/cpuinfo') as f:
      info = f.read()
  except OSError:
    return ''
  model = next(
      (l.split(':', 1)[1].strip() for l in info.splitlines() if l.startswith('model name')), ''
  )
  flags = next((l.split(':', 1)[1].split() for l in info.splitlines() if l.startswith('flags')), [])
  vector = 'AVX-512' if 'avx512f' in flags else 'AVX2' if 'avx2' in flags else 'no AVX2'
  return f'{model}, {vector}'


def line():
  cores = len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else os.cpu_count()
  return (
      f'probe: float32 2048x2048 matmul {matmul_gflops():.0f} GFLOP/s on {cores} cores, '
      f'{cpu_kind()}, load average {os.getloadavg()[0]:.2f}'
  )
