"""XLA_FLAGS of the test processes and the subprocesses they start.

Tests run tiny shapes, so compiling costs far more than running: LLVM at optimization level 0
compiles the suite's programs about 30 % faster. The level changes the speed of the machine
code, not its IEEE arithmetic (no fast-math either way), and a test compares runs made with
the same flags.
"""

FAST_COMPILE = '--xla_backend_optimization_level=0'


def xla_flags(devices=None):
  """XLA_FLAGS for `devices` simulated CPU devices (None: leave the count to the process)."""
  count = f'--xla_force_host_platform_device_count={devices} ' if devices else ''
  return count + FAST_COMPILE
