"""python -m vit_jax.main: a user error is one `error:` line and exit status 2, in seconds."""
import os
import pathlib
import subprocess
import sys
import time

ROOT = pathlib.Path(__file__).parent.parent


def test_bad_config_value_is_one_line_and_status_2_before_compiling(tmp_path):
  env = dict(os.environ, JAX_PLATFORMS='cpu', PYTHONPATH=str(ROOT), VIT_JAX_TCMALLOC='0')
  env.pop('XLA_FLAGS', None)  # the preset's own cpu_devices
  start = time.time()
  run = subprocess.run(
      [sys.executable, '-m', 'vit_jax.main', f'--workdir={tmp_path / "work"}',
       '--config=configs/pit.py:fashion_mnist', '--config.keep_checkpoints=0'],
      cwd=ROOT, env=env, capture_output=True, text=True, timeout=120, check=False)
  elapsed = time.time() - start
  assert run.returncode == 2, run.stderr
  last = run.stderr.strip().splitlines()[-1]
  assert last.startswith('error: config.keep_checkpoints=0'), run.stderr
  assert 'Traceback' not in run.stderr and 'Config:' not in run.stderr
  assert not (tmp_path / 'work').exists()  # stopped before anything was written
  assert elapsed < 60, elapsed
