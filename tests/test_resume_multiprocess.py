"""Real processes: SIGKILL mid-run then resume (bitwise), and 2 processes x 2 devices."""
import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import orbax.checkpoint as ocp

from vit_jax import metrics

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _command(workdir, data_dir, *extra):
  return [sys.executable, '-m', 'vit_jax.main', f'--workdir={workdir}',
          '--config=configs/pit.py:fashion_mnist', f'--config.tfds_data_dir={data_dir}',
          '--config.pp.crop=10', '--config.batch=64', '--config.batch_eval=1000',
          '--config.model.hidden_size=32', '--config.model.transformer.mlp_dim=64',
          '--config.model.transformer.num_layers=2', '--config.warmup_steps=2',
          '--config.eval_every=0', '--config.progress_every=1', *extra]


def _env(devices, **extra):
  env = dict(os.environ, XLA_FLAGS=f'--xla_force_host_platform_device_count={devices}',
             JAX_PLATFORMS='cpu', TF_CPP_MIN_LOG_LEVEL='2', **extra)
  env.pop('JAX_COORDINATOR_ADDRESS', None)
  return env


def _final_params(workdir, step):
  path = os.path.join(workdir, 'checkpoints', str(step), 'default')
  state = ocp.StandardCheckpointer().restore(path)
  return {k: np.asarray(v) for k, v in _flatten(state['params']).items()}


def _flatten(tree, prefix=''):
  out = {}
  for key, value in tree.items():
    if isinstance(value, dict):
      out.update(_flatten(value, f'{prefix}{key}/'))
    else:
      out[prefix + key] = value
  return out


def test_sigkill_then_resume_is_bitwise_equal(fashion_mnist_data_dir, tmp_path):
  steps = ['--config.total_steps=30', '--config.checkpoint_every=5']
  reference = str(tmp_path / 'reference')
  subprocess.run(_command(reference, fashion_mnist_data_dir, *steps), cwd=ROOT, env=_env(8),
                 check=True, timeout=300, capture_output=True)

  killed = str(tmp_path / 'killed')
  proc = subprocess.Popen(_command(killed, fashion_mnist_data_dir, *steps), cwd=ROOT,
                          env=_env(8), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  deadline = time.time() + 300
  while not os.path.exists(os.path.join(killed, 'checkpoints', '10')):
    assert proc.poll() is None, 'run ended before it could be killed'
    assert time.time() < deadline
    time.sleep(0.02)
  proc.send_signal(signal.SIGKILL)
  proc.wait(timeout=60)
  assert not os.path.exists(os.path.join(killed, 'checkpoints', '30'))
  done = subprocess.run(_command(killed, fashion_mnist_data_dir, *steps), cwd=ROOT,
                        env=_env(8), timeout=300, capture_output=True, text=True)
  assert done.returncode == 0, done.stderr[-3000:]
  assert 'Restored checkpoint at step' in done.stderr

  expected, got = _final_params(reference, 30), _final_params(killed, 30)
  assert sorted(expected) == sorted(got)
  for key in expected:
    np.testing.assert_array_equal(got[key], expected[key], err_msg=key)


def _free_port():
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def test_two_processes_match_one_process(fashion_mnist_data_dir, tmp_path):
  steps = ['--config.total_steps=4', '--config.checkpoint_every=4']
  single = str(tmp_path / 'single')
  subprocess.run(_command(single, fashion_mnist_data_dir, *steps), cwd=ROOT, env=_env(4),
                 check=True, timeout=300, capture_output=True)
  multi = str(tmp_path / 'multi')
  port = _free_port()
  procs = [subprocess.Popen(
      _command(multi, fashion_mnist_data_dir, *steps, f'--coordinator_address=127.0.0.1:{port}',
               '--num_processes=2', f'--process_id={i}'),
      cwd=ROOT, env=_env(2), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
              for i in range(2)]
  try:
    outputs = [p.communicate(timeout=300)[0] for p in procs]
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
  for p, out in zip(procs, outputs):
    assert p.returncode == 0, out[-3000:]
  loss = lambda workdir: [r['train_loss'] for r in metrics.read_jsonl(workdir)
                          if 'train_loss' in r]
  np.testing.assert_allclose(loss(multi), loss(single), rtol=1e-5, atol=1e-6)
  assert len(loss(single)) == 4
  accuracy = lambda workdir: [r['eval_accuracy'] for r in metrics.read_jsonl(workdir)
                              if 'eval_accuracy' in r]
  np.testing.assert_allclose(accuracy(multi), accuracy(single), atol=1e-4)


def test_sigterm_saves_and_stops_cleanly(fashion_mnist_data_dir, tmp_path):
  workdir = str(tmp_path / 'preempted')
  proc = subprocess.Popen(
      _command(workdir, fashion_mnist_data_dir, '--config.total_steps=100000',
               '--config.checkpoint_every=1000'),
      cwd=ROOT, env=_env(8), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
  deadline = time.time() + 300
  while not (os.path.exists(os.path.join(workdir, 'metrics.jsonl')) and
             len(metrics.read_jsonl(workdir)) >= 3):
    assert proc.poll() is None and time.time() < deadline
    time.sleep(0.05)
  proc.send_signal(signal.SIGTERM)
  output = proc.communicate(timeout=120)[0]
  assert proc.returncode == 0, output[-3000:]
  saved = [int(s) for s in os.listdir(os.path.join(workdir, 'checkpoints')) if s.isdigit()]
  assert len(saved) == 1 and 3 <= saved[0] < 1000  # saved at the step where it stopped
