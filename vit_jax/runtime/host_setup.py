"""Process set-up that must happen before JAX starts: tcmalloc and the host CPU device count.

Both matter on CPU hosts and change no numbers:
- XLA:CPU allocates its temporaries afresh on every step. Under glibc's malloc the large ones
  are mapped and unmapped each time, so every step page-faults on all of its temporary memory
  (about 64,000 faults per PiT-fmnist step here); tcmalloc keeps them mapped (0 faults),
  which made that step 1.44x faster. `reexec_with_tcmalloc` restarts the process with
  tcmalloc preloaded when it is installed and not loaded yet.
- One XLA CPU device barely uses a second core on small models; one device per core, used
  data-parallel by the mesh, made the same step 1.3x faster. `set_cpu_devices` applies
  `config.cpu_devices` (0: JAX's default; -1: one per core; N: N devices), unless XLA_FLAGS
  already sets --xla_force_host_platform_device_count, which wins (it is the explicit
  choice, e.g. of tests that simulate 8 devices). It only affects the CPU platform: on GPU or
  TPU hosts the mesh uses the accelerators.
"""

import ctypes.util
import os
import sys

from absl import logging

from vit_jax import errors

_FORCE_FLAG = '--xla_force_host_platform_device_count'
# Set to 0 to keep the allocator the process started with.
TCMALLOC_ENV = 'VIT_JAX_TCMALLOC'
_LIBRARIES = ('tcmalloc_minimal', 'tcmalloc')
_KNOWN_PATHS = (
    '/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4',
    '/usr/lib/x86_64-linux-gnu/libtcmalloc.so.4',
    '/usr/lib/aarch64-linux-gnu/libtcmalloc_minimal.so.4',
    '/usr/lib/aarch64-linux-gnu/libtcmalloc.so.4',
)


def find_tcmalloc():
  """Path of an installed tcmalloc shared library, or None."""
  for path in _KNOWN_PATHS:
    if os.path.exists(path):
      return path
  for name in _LIBRARIES:
    found = ctypes.util.find_library(name)  # a soname such as libtcmalloc_minimal.so.4
    if found:
      return found
  return None


def tcmalloc_loaded():
  return 'tcmalloc' in os.environ.get('LD_PRELOAD', '')


def reexec_with_tcmalloc(module=None):
  """Replaces this process by itself with tcmalloc preloaded: `python -m module <same args>`,
  or with `module=None` the same script and arguments (`python bench/x.py ...`).

  Does nothing when tcmalloc is already preloaded, not installed (Debian/Ubuntu:
  `apt-get install libtcmalloc-minimal4`), or disabled with VIT_JAX_TCMALLOC=0. Must run
  before JAX or TensorFlow are imported; the process id stays the same.
  """
  if os.environ.get(TCMALLOC_ENV, '1') == '0' or tcmalloc_loaded():
    return
  path = find_tcmalloc()
  if path is None:
    logging.info(
        'tcmalloc not found; XLA:CPU steps will page-fault on their temporaries '
        '(apt-get install libtcmalloc-minimal4 makes CPU training faster).'
    )
    return
  env = dict(os.environ)
  env['LD_PRELOAD'] = ':'.join(p for p in (path, env.get('LD_PRELOAD')) if p)
  sys.stdout.flush()
  sys.stderr.flush()
  command = ['-m', module] + sys.argv[1:] if module else sys.argv
  os.execve(sys.executable, [sys.executable] + command, env)


def resolve_cpu_devices(cpu_devices):
  """config.cpu_devices -> the device count to request (None: leave JAX's default)."""
  if not isinstance(cpu_devices, int) or cpu_devices < -1:
    raise errors.UserInputError(
        f'config.cpu_devices={cpu_devices!r} must be -1 (one per CPU core), 0 '
        "(JAX's default) or a positive device count."
    )
  if cpu_devices == 0:
    return None
  if cpu_devices == -1:
    return len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else os.cpu_count()
  return cpu_devices


def set_cpu_devices(cpu_devices):
  """Sets jax_num_cpu_devices from config.cpu_devices; call before any JAX computation."""
  count = resolve_cpu_devices(cpu_devices)
  if count is None:
    return
  if _FORCE_FLAG in os.environ.get('XLA_FLAGS', ''):
    logging.warning(
        'XLA_FLAGS sets %s; it wins over config.cpu_devices=%d.', _FORCE_FLAG, cpu_devices
    )
    return
  import jax

  jax.config.update('jax_num_cpu_devices', count)
  logging.info('config.cpu_devices=%d: %d CPU devices', cpu_devices, count)
  if cpu_devices == -1 and count > 1:
    add_xla_flags(ONE_DEVICE_PER_CORE_FLAGS)


# With one device per core, XLA:CPU's defaults cost time (the PiT step on 2 cores, about
# 1.13x): YNNPACK runs the attention's small batched matmuls at a fraction of
# XLA's own dot speed, and intra-op threads make each device's ops wait for the other
# device's core. These flags turn both off. Flags already in XLA_FLAGS win.
ONE_DEVICE_PER_CORE_FLAGS = (
    '--xla_cpu_experimental_ynn_fusion_type=',
    '--xla_cpu_multi_thread_eigen=false',
)


def add_xla_flags(flags):
  """Appends each of `flags` to XLA_FLAGS unless XLA_FLAGS already names it; before JAX's
  CPU backend starts."""
  current = os.environ.get('XLA_FLAGS', '')
  named = {f.split('=')[0] for f in current.split()}
  added = [f for f in flags if f.split('=')[0] not in named]
  if added:
    os.environ['XLA_FLAGS'] = ' '.join([current] + added).strip()
    logging.info('XLA_FLAGS += %s', ' '.join(added))
