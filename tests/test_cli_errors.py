"""Every mistake at the command line is one line `error: ...` and exit status 2, in seconds.

The commands run as real subprocesses (several at once: most stop while parsing flags).
"""

import os
import re
import socket
import subprocess
import sys
import time

import pytest
from xla_test_flags import xla_flags

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PIT = '--config=configs/pit.py:fashion_mnist'

CASES = [
    # (module, arguments, what the one line must say)
    (
        'main',
        ['--workdir=W', '--config=configs/pitt.py:fashion_mnist'],
        "there is no such config file .* did you mean 'pit.py'",
    ),
    (
        'main',
        ['--workdir=W', '--config=configs/pit.py:imagenet_pit_x'],
        "unknown PiT recipe 'imagenet_pit_x'; did you mean 'imagenet_pit_s'",
    ),
    (
        'main',
        ['--workdir=W', '--config=configs/vit.py:b17,cifar10'],
        "unknown model 'b17'; did you mean 'b16'",
    ),
    (
        'main',
        ['--workdir=W', '--config=configs/vit.py:testing'],
        'configs/vit.py:testing is not <model>,<dataset>',
    ),
    (
        'main',
        ['--workdir=W', '--config=configs/vit.py:testing,cifar11'],
        "unknown dataset preset 'cifar11'; did you mean 'cifar10'",
    ),
    (
        'main',
        ['--workdir=W', '--config=configs/mae.py:fashion_mnist_finetun'],
        "did you mean 'fashion_mnist_finetune'",
    ),
    (
        'main',
        ['--workdir=W', '--config=configs/augreg.py:B_16-i21k-300ep-lr_0.001,mnist'],
        'names an AugReg checkpoint but is not a .npz file',
    ),
    (
        'main',
        ['--workdir=W', '--config=configs/augreg.py:B_17'],
        "unknown AugReg model 'B_17'; did you mean 'B_16'",
    ),
    (
        'main',
        ['--workdir=W', PIT, '--config.batchsize=32'],
        "config has no field 'batchsize'; did you mean 'batch'",
    ),
    (
        'main',
        ['--workdir=W', PIT, '--config.model.transformer.num_layer=2'],
        "config.model.transformer has no field 'num_layer'; did you mean 'num_layers'",
    ),
    ('main', ['--workdir=W', PIT, '--noconfig.pp.flipp'], "did you mean 'flip'"),
    ('main', ['--workdir=W', PIT, '--config.batch=abc'], r'--config.batch=abc: invalid literal'),
    ('main', [PIT], 'Flag --workdir must have a value'),
    ('main', ['--workdir=W', PIT, 'extra'], r"Unexpected arguments: \['extra'\]"),
    (
        'main',
        [
            '--workdir=W',
            PIT,
            '--coordinator_address=127.0.0.1:1234',
            '--num_processes=2',
            '--process_id=2',
        ],
        r'--process_id=2 is out of range .* in 0\.\.1',
    ),
    (
        'main',
        ['--workdir=W', PIT, '--coordinator_address=127.0.0.1:1234', '--process_id=0'],
        'needs --num_processes=N too',
    ),
    (
        'main',
        ['--workdir=W', PIT, '--num_processes=2', '--process_id=0'],
        'need --coordinator_address=HOST:PORT',
    ),
    (
        'main',
        ['--workdir=gs://bucket/run', PIT],
        'gs://bucket/run is on Cloud Storage and no Google Cloud credentials were found',
    ),
    (
        'main',
        ['--workdir=W', PIT, '--config.momentum=0.5'],
        "config.momentum=0.5 has no effect here: it acts only with config.optim='sgd'",
    ),
    ('aot', [PIT, '--topology=v5e:2x2', '--num_slices=0'], '--num_slices=0 must be >= 1'),
    ('aot', [PIT, '--topology=v5e:2x2', '--num_classes=0'], '--num_classes=0 must be >= 1'),
    ('inference', ['--checkpoint=x.npz', '--top_k=0', 'a.png'], '--top_k=0 must be >= 1'),
    (
        'inference',
        ['--checkpoint=x.npz', '--benchmark', '--batch=0'],
        '--batch=0 must be >= 1 for --benchmark',
    ),
    (
        'inference',
        ['--checkpoint=gs://bucket/m.npz', 'a.png'],
        'no Google Cloud credentials were found.*gcloud auth application-default login',
    ),
]


def _env(**extra):
  env = dict(os.environ, JAX_PLATFORMS='cpu', PYTHONPATH=ROOT, VIT_JAX_TCMALLOC='0', **extra)
  for key in (
      'STORAGE_EMULATOR_HOST',
      'GOOGLE_APPLICATION_CREDENTIALS',
      'TENSORSTORE_GCS_HTTP_URL',
      'JAX_COORDINATOR_ADDRESS',
      'JAX_NUM_PROCESSES',
      'JAX_PROCESS_ID',
  ):
    env.pop(key, None)
  return env


@pytest.mark.slow
@pytest.mark.long
def test_each_mistake_is_one_line_and_status_2(tmp_path):
  procs = []
  for module, args, _ in CASES:
    args = [a.replace('W', str(tmp_path / 'w')) if a.startswith('--workdir=W') else a for a in args]
    procs.append(
        subprocess.Popen(
            [sys.executable, '-m', f'vit_jax.{module}', *args],
            cwd=ROOT,
            env=_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
    )
    if len(procs) % 4 == 0:  # a few at a time on a small machine
      procs[-4].wait(timeout=120)
  for proc, (module, args, expected) in zip(procs, CASES):
    _, err = proc.communicate(timeout=120)
    lines = err.strip().splitlines()
    assert proc.returncode == 2, (module, args, err[-2000:])
    assert len(lines) == 1 and lines[0].startswith('error: '), (module, args, err[-2000:])
    assert re.search(expected, lines[0]), (expected, lines[0])
  assert not (tmp_path / 'w').exists()


def _free_port():
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


@pytest.mark.slow
def test_a_process_whose_peers_never_come_says_so_and_gives_up(tmp_path):
  """Process 1 without a coordinator, and a coordinator without process 1 (at once)."""
  start = time.time()
  procs = [
      subprocess.Popen(
          [
              sys.executable,
              '-m',
              'vit_jax.main',
              f'--workdir={tmp_path / "w"}',
              PIT,
              f'--coordinator_address=127.0.0.1:{_free_port()}',
              '--num_processes=2',
              f'--process_id={process_id}',
              '--coordinator_timeout=5',
          ],
          cwd=ROOT,
          env=_env(XLA_FLAGS=xla_flags(1)),
          stdout=subprocess.PIPE,
          stderr=subprocess.PIPE,
          text=True,
      )
      for process_id in (0, 1)
  ]
  for process_id, proc in enumerate(procs):
    _, err = proc.communicate(timeout=120)
    lines = err.strip().splitlines()
    assert proc.returncode == 2, err[-3000:]
    waiting = (
        'the other 1 processes to connect' if process_id == 0 else ('the coordinator (process 0)')
    )
    assert any(f'Process {process_id} of 2: waiting for {waiting}' in line for line in lines)
    assert lines[-1].startswith(
        f'error: process {process_id} of 2 gave up after ' '--coordinator_timeout=5 s'
    ), lines[-1]
    assert 'Traceback' not in err
  assert time.time() - start < 60
  assert not (tmp_path / 'w').exists()
