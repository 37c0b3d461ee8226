"""A fixed measure of a host's speed, printed by the benches to compare hosts of one kind.

Hosts sold as the same 2-core machine differ: the PiT main job took 425 s on one and 680 s
on another, both idle. The probe is a float32 2048x2048 matmul through numpy (its BLAS, all
cores), best of 5: 194-203 GFLOP/s on the host the README's figures come from, 100-140 on
the slowest one seen (issue 16).
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
    a @ a  # pylint: disable=pointless-statement
    best = min(best, time.perf_counter() - start)
  return 2 * size**3 / best / 1e9


def line():
  cores = len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else os.cpu_count()
  return (f'probe: float32 2048x2048 matmul {matmul_gflops():.0f} GFLOP/s on {cores} cores, '
          f'load average {os.getloadavg()[0]:.2f}')
