"""python -m vit_jax.main: a user error is one `error:` line and exit status 2, in seconds."""

import os
import pathlib
import subprocess
import sys
import time

import pytest
from xla_test_flags import xla_flags

ROOT = pathlib.Path(__file__).parent.parent


def test_bad_config_value_is_one_line_and_status_2_before_compiling(tmp_path):
  env = dict(os.environ, JAX_PLATFORMS='cpu', PYTHONPATH=str(ROOT), VIT_JAX_TCMALLOC='0')
  env['XLA_FLAGS'] = xla_flags()  # no device count: the preset's own cpu_devices
  start = time.time()
  run = subprocess.run(
      [
          sys.executable,
          '-m',
          'vit_jax.main',
          f'--workdir={tmp_path / "work"}',
          '--config=configs/pit.py:fashion_mnist',
          '--config.keep_checkpoints=0',
      ],
      cwd=ROOT,
      env=env,
      capture_output=True,
      text=True,
      timeout=120,
      check=False,
  )
  elapsed = time.time() - start
  assert run.returncode == 2, run.stderr
  last = run.stderr.strip().splitlines()[-1]
  assert last.startswith('error: config.keep_checkpoints=0'), run.stderr
  assert 'Traceback' not in run.stderr and 'Config:' not in run.stderr
  assert not (tmp_path / 'work').exists()  # stopped before anything was written
  assert elapsed < 60, elapsed


@pytest.mark.slow
def test_corrupt_image_mid_run_finishes_the_pending_save_and_names_the_file(tmp_path):
  """Step 1 is saved asynchronously; step 2's batch holds an undecodable file."""
  import numpy as np
  from PIL import Image
  import tensorflow as tf

  rng = np.random.default_rng(0)
  files = []
  for split in ('train', 'test'):
    for name in ('a', 'b'):
      (tmp_path / 'data' / split / name).mkdir(parents=True)
      for i in range(8):
        path = tmp_path / 'data' / split / name / f'{i}.png'
        Image.fromarray(rng.integers(0, 255, (8, 8, 3), np.uint8)).save(path)
        files += [path] if split == 'train' else []
  # Global position 8 (the first of step 2) reads this example (the pipeline's shuffle).
  index = int(
      tf.random.experimental.index_shuffle(
          tf.constant(8, tf.int64), tf.constant([0, 0], tf.int64), tf.constant(15, tf.int64)
      )
  )
  files[index].write_bytes(b'not a png')
  env = dict(
      os.environ,
      JAX_PLATFORMS='cpu',
      PYTHONPATH=str(ROOT),
      VIT_JAX_TCMALLOC='0',
      XLA_FLAGS=xla_flags(2),
  )
  run = subprocess.run(
      [
          sys.executable,
          '-m',
          'vit_jax.main',
          f'--workdir={tmp_path / "work"}',
          '--config=configs/pit.py:fashion_mnist',
          f'--config.dataset={tmp_path / "data"}',
          '--config.pp.crop=8',
          '--config.batch=8',
          '--config.batch_eval=8',
          '--config.model.hidden_size=16',
          '--config.model.transformer.mlp_dim=16',
          '--config.model.transformer.num_layers=1',
          '--config.total_steps=4',
          '--config.warmup_steps=1',
          '--config.checkpoint_every=1',
          '--config.eval_every=0',
          '--config.pp.on_device=False',
      ],
      cwd=ROOT,
      env=env,
      capture_output=True,
      text=True,
      timeout=300,
      check=False,
  )
  assert run.returncode == 2, run.stderr[-3000:]
  last = run.stderr.strip().splitlines()[-1]
  assert last.startswith('error:') and str(files[index]) in last and 'step 2' in last, last
  assert 'Event loop is closed' not in run.stderr and 'Traceback' not in run.stderr
  saved = sorted(os.listdir(tmp_path / 'work' / 'checkpoints'))
  assert saved == ['1'], saved  # finished, not left as *.orbax-checkpoint-tmp
