"""Real processes: 2 processes x 2 devices against 1 x 4, SIGTERM to one of them, Ctrl-C.

(SIGKILL mid-run and resume is tested with a gs:// workdir in test_gcs.py.)
"""

import os
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest
from xla_test_flags import xla_flags

from vit_jax.checkpoints import orbax_state
from vit_jax.training import metrics

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _command(workdir, data_dir, *extra):
  return [
      sys.executable,
      '-m',
      'vit_jax.main',
      f'--workdir={workdir}',
      '--config=configs/pit.py:fashion_mnist',
      f'--config.tfds_data_dir={data_dir}',
      '--config.pp.crop=10',
      '--config.batch=64',
      '--config.batch_eval=1000',
      '--config.pp.train=train[:4096]',  # the device copy of the split: seconds per process
      '--config.pp.test=test[:2000]',  # 2 eval batches: split over processes all the same
      '--config.model.hidden_size=32',
      '--config.model.transformer.mlp_dim=64',
      '--config.model.transformer.num_layers=2',
      '--config.warmup_steps=2',
      '--config.eval_every=0',
      '--config.progress_every=1',
      *extra,
  ]


def _env(devices, **extra):
  env = dict(
      os.environ,
      XLA_FLAGS=xla_flags(devices),
      JAX_PLATFORMS='cpu',
      TF_CPP_MIN_LOG_LEVEL='2',
      **extra,
  )
  env.pop('JAX_COORDINATOR_ADDRESS', None)
  return env


def _final_params(workdir, step):
  params = orbax_state.load_params(os.path.join(workdir, 'checkpoints'), step)
  return {
      '/'.join(str(k.key) for k in path): leaf
      for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]
  }


def _free_port():
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def _launch(workdir, data_dir, port, steps):
  """Two processes; output to files (a full pipe would block one of them, and the other in
  its next collective)."""
  procs = []
  for i in range(2):
    log = open(f'{workdir}.{port}.{i}.log', 'w+')
    procs.append(
        subprocess.Popen(
            _command(
                workdir,
                data_dir,
                *steps,
                f'--coordinator_address=127.0.0.1:{port}',
                '--num_processes=2',
                f'--process_id={i}',
            ),
            cwd=ROOT,
            env=_env(2),
            stdout=log,
            stderr=subprocess.STDOUT,
            text=True,
        )
    )
    procs[-1].log = log
  return procs


def _finish(procs):
  outputs = []
  try:
    for p in procs:
      p.wait(timeout=300)
      p.log.seek(0)
      outputs.append(p.log.read())
      p.log.close()
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
  return [p.returncode for p in procs], outputs


def _steps_saved(workdir):
  return sorted(int(s) for s in os.listdir(os.path.join(workdir, 'checkpoints')) if s.isdigit())


@pytest.mark.slow
@pytest.mark.long
def test_two_processes_match_one_process_and_survive_sigterm_to_one(
    fashion_mnist_data_dir, tmp_path
):
  total = 30
  steps = [f'--config.total_steps={total}', '--config.checkpoint_every=1000']
  single = str(tmp_path / 'single')
  subprocess.run(
      _command(single, fashion_mnist_data_dir, *steps),
      cwd=ROOT,
      env=_env(4),
      check=True,
      timeout=300,
      capture_output=True,
  )
  reference = str(tmp_path / 'reference')
  codes, outputs = _finish(_launch(reference, fashion_mnist_data_dir, _free_port(), steps))
  assert codes == [0, 0], outputs[0][-3000:] + outputs[1][-3000:]
  loss = lambda workdir: [r['train_loss'] for r in metrics.read_jsonl(workdir) if 'train_loss' in r]
  np.testing.assert_allclose(loss(reference), loss(single), rtol=1e-5, atol=1e-6)
  assert len(loss(single)) == total
  accuracy = lambda workdir: [
      r['eval_accuracy'] for r in metrics.read_jsonl(workdir) if 'eval_accuracy' in r
  ]
  np.testing.assert_allclose(accuracy(reference), accuracy(single), atol=1e-4)

  # SIGTERM to process 1 only: both stop after one agreed step, save it, exit 128 + 15.
  preempted = str(tmp_path / 'preempted')
  procs = _launch(preempted, fashion_mnist_data_dir, _free_port(), steps)
  deadline = time.time() + 300
  while not (
      os.path.exists(os.path.join(preempted, 'metrics.jsonl'))
      and len(metrics.read_jsonl(preempted)) >= 3
  ):
    assert all(p.poll() is None for p in procs) and time.time() < deadline
    time.sleep(0.05)
  procs[1].send_signal(signal.SIGTERM)
  codes, outputs = _finish(procs)
  assert codes == [143, 143], outputs[0][-3000:] + outputs[1][-3000:]
  saved = _steps_saved(preempted)
  assert len(saved) == 1 and 3 <= saved[0] < total, saved
  assert all(f'Stopped early at step {saved[0]}' in out for out in outputs)

  codes, outputs = _finish(_launch(preempted, fashion_mnist_data_dir, _free_port(), steps))
  assert codes == [0, 0], outputs[0][-3000:] + outputs[1][-3000:]
  expected, got = _final_params(reference, total), _final_params(preempted, total)
  assert sorted(expected) == sorted(got)
  for key in expected:
    np.testing.assert_array_equal(got[key], expected[key], err_msg=key)
  assert [r['step'] for r in metrics.read_jsonl(preempted) if 'train_loss' in r] == list(
      range(1, total + 1)
  )


@pytest.mark.slow
@pytest.mark.long
def test_ctrl_c_saves_and_exits_130(fashion_mnist_data_dir, tmp_path):
  workdir = str(tmp_path / 'interrupted')
  proc = subprocess.Popen(
      _command(
          workdir,
          fashion_mnist_data_dir,
          '--config.total_steps=100000',
          '--config.checkpoint_every=1000',
      ),
      cwd=ROOT,
      env=_env(8),
      stdout=subprocess.PIPE,
      stderr=subprocess.STDOUT,
      text=True,
  )
  deadline = time.time() + 300
  while not (
      os.path.exists(os.path.join(workdir, 'metrics.jsonl'))
      and len(metrics.read_jsonl(workdir)) >= 3
  ):
    assert proc.poll() is None and time.time() < deadline
    time.sleep(0.05)
  proc.send_signal(signal.SIGINT)
  output = proc.communicate(timeout=120)[0]
  assert proc.returncode == 130, output[-3000:]
  saved = _steps_saved(workdir)
  assert len(saved) == 1 and 3 <= saved[0] < 1000  # saved at the step where it stopped
  logged = [r['step'] for r in metrics.read_jsonl(workdir)]
  assert logged[-1] == saved[0] and len(logged) == len(set(logged))
