"""A run never damages files that are not its own, and never loses the steps it trained.

Real runs (tiny PiT on Fashion-MNIST, or 8x8 PNG folders): a Hugging Face folder given as
the workdir stays byte for byte, a refused resume changes no file, a second concurrent run is
refused while the first keeps one clean metrics.jsonl, a crashed run's lock is stale, a
failing eval or a bad image mid-run leaves the last state saved and says which step.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
from PIL import Image
import pytest
import tensorflow as tf
from test_gcs import BUCKET
from test_gcs import gcs  # noqa: F401 (the GCS emulator fixture, injected by name)
from test_train import tiny_config
from xla_test_flags import xla_flags

from vit_jax import errors
from vit_jax import paths
from vit_jax import train
from vit_jax.runtime import workdir as workdir_lib
from vit_jax.training import metrics

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FAST = {'pp.test': 'test[:1000]', 'total_steps': 2, 'checkpoint_every': 1000}


def _snapshot(folder):
  """{relative path: (bytes, mtime)} of every file under `folder`, and every folder."""
  out = {}
  for root, dirs, files in os.walk(folder):
    for name in dirs:
      out[os.path.relpath(os.path.join(root, name), folder) + '/'] = None
    for name in files:
      path = os.path.join(root, name)
      with open(path, 'rb') as f:
        out[os.path.relpath(path, folder)] = (f.read(), os.stat(path).st_mtime_ns)
  return out


def test_a_hugging_face_folder_given_as_workdir_stays_byte_for_byte(
    fashion_mnist_data_dir, tmp_path
):
  hf = tmp_path / 'vit-base-patch16-224'
  hf.mkdir()
  (hf / 'config.json').write_text(
      json.dumps(
          {'architectures': ['ViTForImageClassification'], 'model_type': 'vit', 'hidden_size': 768}
      )
  )
  (hf / 'model.safetensors').write_bytes(os.urandom(1000))
  before = _snapshot(hf)
  # The case: the pretrained folder itself as the workdir.
  config = tiny_config(fashion_mnist_data_dir, pretrained_path=str(hf), **FAST)
  with pytest.raises(errors.UserInputError, match='not a vit_jax run') as error:
    train.train_and_evaluate(config, str(hf))
  assert 'model.safetensors' in str(error.value) and 'Nothing was written' in str(error.value)
  assert _snapshot(hf) == before
  (tmp_path / 'notes').mkdir()
  (tmp_path / 'notes' / 'todo.txt').write_text('mine')
  before = _snapshot(tmp_path / 'notes')
  with pytest.raises(errors.UserInputError, match='has no config.json of a vit_jax run'):
    train.train_and_evaluate(tiny_config(fashion_mnist_data_dir, **FAST), str(tmp_path / 'notes'))
  assert _snapshot(tmp_path / 'notes') == before


@pytest.mark.slow
def test_refused_resumes_and_late_config_errors_change_no_file(fashion_mnist_data_dir, tmp_path):
  workdir = str(tmp_path / 'run')
  train.train_and_evaluate(tiny_config(fashion_mnist_data_dir, **FAST), workdir)
  before = _snapshot(workdir)
  assert 'config.json' in before and 'checkpoints/2/' in before
  assert workdir_lib.LOCK not in before  # released at the end
  refused = [
      (dict(FAST, **{'model.hidden_size': 24}), 'written by a different train state'),
      (dict(FAST, total_steps=1, warmup_steps=0), 'beyond config.total_steps=1'),
      (dict(FAST, **{'pp.test': 'validation'}), "config.pp.test='validation' cannot be read"),
      (dict(FAST, **{'pp.train': 'train[:200%]'}), 'percent slice boundaries'),
  ]
  for overrides, message in refused:
    with pytest.raises(errors.UserInputError, match=message):
      train.train_and_evaluate(tiny_config(fashion_mnist_data_dir, **overrides), workdir)
    assert _snapshot(workdir) == before, overrides
  # A new workdir is not left behind by a refused run: refused by the split check (before
  # the lock), or by the pretrained file (read after the lock).
  with pytest.raises(errors.UserInputError, match=r'test\[5:5\].*\(the slice is empty\)'):
    train.train_and_evaluate(
        tiny_config(fashion_mnist_data_dir, **dict(FAST, **{'pp.test': 'test[5:5]'})),
        str(tmp_path / 'new'),
    )
  (tmp_path / 'weights.npz').write_text('not a checkpoint')
  with pytest.raises(errors.UserInputError, match='weights.npz'):
    train.train_and_evaluate(
        tiny_config(
            fashion_mnist_data_dir, **dict(FAST, pretrained_path=str(tmp_path / 'weights.npz'))
        ),
        str(tmp_path / 'new'),
    )
  assert not (tmp_path / 'new').exists()


def test_an_unwritable_workdir_is_one_clear_error(fashion_mnist_data_dir):
  config = tiny_config(fashion_mnist_data_dir, **FAST)
  with pytest.raises(errors.UserInputError, match='cannot be written .* pass a folder you can'):
    train.train_and_evaluate(config, '/proc/vit_jax_workdir')  # read-only even for root


def _lock(workdir, **owner):
  lock = dict(
      {
          'host': socket.gethostname(),
          'pid': os.getpid(),
          'pid_start': None,
          'token': 'x',
          'started': time.time(),
          'heartbeat': time.time(),
          'command': 'an earlier run',
      },
      **owner,
  )
  os.makedirs(workdir, exist_ok=True)
  with open(os.path.join(workdir, workdir_lib.LOCK), 'w') as f:
    json.dump(lock, f)


def test_lock_stale_rules_and_force_unlock(tmp_path):
  workdir = str(tmp_path / 'w')
  other = {'host': 'another-host', 'pid': 1}
  _lock(workdir, **other)  # another host, fresh heartbeat: held
  with pytest.raises(
      errors.UserInputError,
      match="in use by another run .*'another-host'.*" 'rerun with --force_unlock',
  ):
    workdir_lib.Lock(workdir).acquire()
  lock = workdir_lib.Lock(workdir)
  lock.acquire(force=True)  # the user says it is gone
  assert json.loads((tmp_path / 'w' / workdir_lib.LOCK).read_text())['pid'] == os.getpid()
  lock.release()
  assert not (tmp_path / 'w' / workdir_lib.LOCK).exists()
  stale = [
      dict(other, heartbeat=time.time() - workdir_lib.STALE_SECONDS - 1),
      {'pid': 2**22 + 12345},  # this host, no such process
      {'pid': os.getpid(), 'pid_start': -1},
  ]  # this host, the pid is a newer process
  for owner in stale:
    _lock(workdir, **owner)
    lock = workdir_lib.Lock(workdir)
    lock.acquire()
    lock.release()
  _lock(workdir)  # this live process: even --force_unlock does not take it
  with pytest.raises(errors.UserInputError, match=f'alive on this host.*kill {os.getpid()}'):
    workdir_lib.Lock(workdir).acquire(force=True)


def _tiny_run_command(workdir, data_dir, *extra):
  return [
      sys.executable,
      '-m',
      'vit_jax.main',
      f'--workdir={workdir}',
      '--config=configs/pit.py:fashion_mnist',
      f'--config.tfds_data_dir={data_dir}',
      '--config.pp.crop=8',
      '--config.batch=16',
      '--config.batch_eval=1000',
      '--config.pp.test=test[:1000]',
      '--config.model.hidden_size=16',
      '--config.model.transformer.mlp_dim=32',
      '--config.model.transformer.num_heads=2',
      '--config.model.transformer.num_layers=1',
      '--config.warmup_steps=1',
      '--config.eval_every=0',
      '--config.progress_every=1',
      '--config.cpu_devices=0',
      *extra,
  ]


@pytest.mark.slow
@pytest.mark.long
def test_second_run_is_refused_and_a_killed_runs_lock_is_stale(fashion_mnist_data_dir, tmp_path):
  workdir = tmp_path / 'run'
  env = dict(
      os.environ, JAX_PLATFORMS='cpu', PYTHONPATH=ROOT, VIT_JAX_TCMALLOC='0', XLA_FLAGS=xla_flags(2)
  )
  first = subprocess.Popen(
      _tiny_run_command(
          workdir,
          fashion_mnist_data_dir,
          '--config.total_steps=1000000',
          '--config.checkpoint_every=5',
      ),
      cwd=ROOT,
      env=env,
      stdout=subprocess.DEVNULL,
      stderr=subprocess.DEVNULL,
  )
  try:
    deadline = time.time() + 240
    while not (workdir / 'checkpoints' / '5').exists():
      assert first.poll() is None and time.time() < deadline, 'the first run did not start'
      time.sleep(0.2)
    second = tiny_config(fashion_mnist_data_dir, **dict(FAST, total_steps=10))
    with pytest.raises(
        errors.UserInputError, match=f'in use by another run \\(pid {first.pid} on host'
    ):
      train.train_and_evaluate(second, str(workdir))
  finally:
    first.send_signal(signal.SIGKILL)  # a crash: its lock stays behind
    first.wait(timeout=60)
  assert (workdir / workdir_lib.LOCK).exists()
  saved = max(int(s) for s in os.listdir(workdir / 'checkpoints') if s.isdigit())
  result = train.train_and_evaluate(  # the dead pid's lock is stale: taken over, resumed
      # progress_every=1 as the first run's command: every step logged, whatever `saved` is.
      tiny_config(fashion_mnist_data_dir, **dict(FAST, total_steps=saved + 2, progress_every=1)),
      str(workdir),
  )
  assert result['step'] == saved + 2
  steps = [r['step'] for r in metrics.read_jsonl(str(workdir)) if 'train_loss' in r]
  assert steps == list(range(1, saved + 3))  # every step once
  assert not (workdir / workdir_lib.LOCK).exists()


def _image_folder(root, corrupt_split, position):
  """root/{train,test}/{a,b}/<i>.png, 8 8x8 images per class; the file the pipeline reads at
  global `position` of `corrupt_split` is not a PNG. Returns its path."""
  rng = np.random.default_rng(0)
  files = {'train': [], 'test': []}
  for split in files:
    for name in ('a', 'b'):
      (root / split / name).mkdir(parents=True)
      for i in range(8):
        path = root / split / name / f'{i}.png'
        Image.fromarray(rng.integers(0, 255, (8, 8, 3), np.uint8)).save(path)
        files[split].append(path)
  index = position
  if corrupt_split == 'train':  # the train order is a permutation (the pipeline's shuffle)
    index = int(
        tf.random.experimental.index_shuffle(
            tf.constant(position, tf.int64),
            tf.constant([0, 0], tf.int64),
            tf.constant(15, tf.int64),
        )
    )
  files[corrupt_split][index].write_bytes(b'not a png')
  return files[corrupt_split][index]


@pytest.mark.slow
@pytest.mark.parametrize('corrupt_split,saved_step', [('test', 2), ('train', 1)])
def test_an_error_after_step_one_keeps_the_last_state(
    fashion_mnist_data_dir, tmp_path, corrupt_split, saved_step
):
  """test: the final eval fails after step 2 was saved; train: step 2's batch holds the bad
  file, and step 1 (not a checkpoint step) is saved after the error."""
  bad = _image_folder(tmp_path / 'data', corrupt_split, 8)
  config = tiny_config(
      fashion_mnist_data_dir,
      **{
          'dataset': str(tmp_path / 'data'),
          'pp.on_device': False,
          'batch': 8,
          'batch_eval': 8,
          'total_steps': 2,
          'checkpoint_every': 1000,
          'eval_every': 0,
      },
  )
  workdir = tmp_path / 'run'
  with pytest.raises(errors.UserInputError, match=str(bad)) as error:
    train.train_and_evaluate(config, str(workdir))
  line = errors.one_line(error.value)
  assert line.endswith(
      f'The checkpoint at step {saved_step} is saved in {workdir}; run the '
      'same command to resume from it.'
  ), line
  assert sorted(os.listdir(workdir / 'checkpoints')) == [str(saved_step)]
  assert not (workdir / workdir_lib.LOCK).exists()


@pytest.mark.slow
def test_the_lock_in_a_bucket_takes_one_run(gcs, tmp_path):
  del gcs
  workdir = f'gs://{BUCKET}/locked'
  first = workdir_lib.Lock(workdir)
  first.acquire()
  assert paths.exists(f'{workdir}/{workdir_lib.LOCK}')
  with pytest.raises(errors.UserInputError, match=f'in use by another run \\(pid {os.getpid()}'):
    workdir_lib.Lock(workdir).acquire()
  first.release()
  assert not paths.exists(f'{workdir}/{workdir_lib.LOCK}')
  second = workdir_lib.Lock(workdir)
  second.acquire()
  second.release()
  # A foreign folder in a bucket is refused like a local one.
  paths.write_text(f'gs://{BUCKET}/hf/config.json', '{"model_type": "vit"}')
  with pytest.raises(errors.UserInputError, match='not a vit_jax run'):
    workdir_lib.refuse_unless_ours(f'gs://{BUCKET}/hf')
  del tmp_path
