"""Process set-up before JAX starts: re-exec under tcmalloc, CPU device count (subprocesses)."""

import os
import subprocess
import sys
import textwrap

import pytest

from vit_jax.runtime import host_setup

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

PROBE = textwrap.dedent("""
    import os, sys
    from vit_jax.runtime import host_setup
    print('start', os.getpid(), os.environ.get('LD_PRELOAD', ''), flush=True)
    host_setup.reexec_with_tcmalloc('reexec_probe')
    maps = open('/proc/self/maps').read()
    print('ready', os.getpid(), 'tcmalloc' in maps, ' '.join(sys.argv[1:]), flush=True)
""")


def _run_probe(tmp_path, **env):
  (tmp_path / 'reexec_probe.py').write_text(PROBE)
  env = dict(os.environ, PYTHONPATH=f'{tmp_path}:{ROOT}', **env)
  env.pop('LD_PRELOAD', None)
  out = subprocess.run(
      [sys.executable, '-m', 'reexec_probe', '--a=1', 'b c'],
      env=env,
      capture_output=True,
      text=True,
      timeout=60,
      check=True,
  ).stdout
  return [line.split(' ', 3) for line in out.splitlines()]


def test_reexec_preloads_tcmalloc_and_keeps_pid_and_args(tmp_path):
  assert host_setup.find_tcmalloc(), (
      'tcmalloc is not installed: apt-get install ' 'libtcmalloc-minimal4 (.ci/install does)'
  )
  lines = _run_probe(tmp_path)
  (start, pid, preload_before), (again, pid_again, preload_after), ready = lines
  assert start == again == 'start' and preload_before == '' and 'tcmalloc' in preload_after
  assert ready == ['ready', pid, 'True', '--a=1 b c'] and pid_again == pid


def test_reexec_of_a_script(tmp_path):
  script = tmp_path / 'probe_script.py'
  script.write_text(PROBE.replace("reexec_with_tcmalloc('reexec_probe')", 'reexec_with_tcmalloc()'))
  env = dict(os.environ, PYTHONPATH=ROOT)
  env.pop('LD_PRELOAD', None)
  out = subprocess.run(
      [sys.executable, str(script), 'x'],
      env=env,
      capture_output=True,
      text=True,
      timeout=60,
      check=True,
  ).stdout.splitlines()
  assert [line.split()[0] for line in out] == ['start', 'start', 'ready']
  assert out[-1].endswith('True x')


def test_reexec_can_be_disabled(tmp_path):
  lines = _run_probe(tmp_path, VIT_JAX_TCMALLOC='0')
  assert [line[0] for line in lines] == ['start', 'ready']
  assert lines[1][2] == 'False'  # the process runs on the allocator it started with


COUNT_DEVICES_AND_POOL = textwrap.dedent("""
    import glob, sys
    from vit_jax.runtime import host_setup
    import jax, jax.numpy as jnp
    host_setup.set_cpu_devices(int(sys.argv[1]))
    jax.jit(lambda a: a @ a)(jnp.ones((256, 256))).block_until_ready()
    names = [open(f).read().strip() for f in glob.glob('/proc/self/task/*/comm')]
    print(jax.device_count(), sum(name.endswith('XLAEigen') for name in names))
""")


def _devices_and_pool(cpu_devices, xla_flags=None, nproc=None):
  """(device count, XLA Eigen pool threads) of a fresh process after set_cpu_devices."""
  env = dict(os.environ, JAX_PLATFORMS='cpu')
  for key, value in (('XLA_FLAGS', xla_flags), ('NPROC', nproc)):
    env.pop(key, None)
    if value:
      env[key] = value
  out = subprocess.run(
      [sys.executable, '-c', COUNT_DEVICES_AND_POOL, str(cpu_devices)],
      env=env,
      cwd=ROOT,
      capture_output=True,
      text=True,
      timeout=120,
      check=True,
  ).stdout
  devices, pool = out.split()[-2:]
  return int(devices), int(pool)


def _device_count(cpu_devices, xla_flags=None):
  return _devices_and_pool(cpu_devices, xla_flags)[0]


def test_cpu_devices_one_per_core_or_explicit():
  assert _device_count(-1) == len(os.sched_getaffinity(0))
  assert _device_count(3) == 3
  assert _device_count(0) == 1


def test_default_pool_is_one_thread_per_core():
  # More XLA pool threads than cores (NPROC=3 with 2 devices) made the all-reduce
  # rendezvous abort; the pool must stay at XLA's default.
  assert _devices_and_pool(2) == (2, len(os.sched_getaffinity(0)))


def test_explicit_xla_flags_win_over_config():
  assert _device_count(3, '--xla_force_host_platform_device_count=5') == 5


@pytest.mark.parametrize('bad', [-2, 1.5, '2'])
def test_bad_cpu_devices_is_a_clear_error(bad):
  with pytest.raises(ValueError, match=r'config.cpu_devices=.*-1 \(one per CPU core\)'):
    host_setup.resolve_cpu_devices(bad)


XLA_FLAGS_AND_DOT = textwrap.dedent("""
    import os, sys
    from vit_jax.runtime import host_setup
    import jax, jax.numpy as jnp
    host_setup.set_cpu_devices(int(sys.argv[1]))
    hlo = jax.jit(lambda a: a @ a).lower(jnp.ones((256, 256))).compile().as_text()
    print('FLAGS=' + os.environ.get('XLA_FLAGS', ''))
    print('ynn' in hlo)
""")


def _flags_and_ynn(cpu_devices, xla_flags=None):
  env = dict(os.environ, JAX_PLATFORMS='cpu')
  env.pop('XLA_FLAGS', None)
  if xla_flags:
    env['XLA_FLAGS'] = xla_flags
  out = (
      subprocess.run(
          [sys.executable, '-c', XLA_FLAGS_AND_DOT, str(cpu_devices)],
          env=env,
          cwd=ROOT,
          capture_output=True,
          text=True,
          timeout=120,
          check=True,
      )
      .stdout.strip()
      .splitlines()
  )
  return out[-2][len('FLAGS=') :], out[-1] == 'True'


def test_one_device_per_core_turns_off_ynnpack_and_intra_op_threads():
  flags, ynn = _flags_and_ynn(-1)
  if len(os.sched_getaffinity(0)) > 1:
    assert set(host_setup.ONE_DEVICE_PER_CORE_FLAGS) <= set(flags.split()) and not ynn
  # An explicit device count keeps XLA's defaults (YNNPACK runs the matmul).
  flags, ynn = _flags_and_ynn(3)
  assert flags == '' and ynn
  # Flags the user set win.
  flags, _ = _flags_and_ynn(-1, '--xla_cpu_multi_thread_eigen=true')
  assert '--xla_cpu_multi_thread_eigen=true' in flags.split()
  assert '--xla_cpu_multi_thread_eigen=false' not in flags.split()
