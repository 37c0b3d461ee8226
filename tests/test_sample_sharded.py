"""python -m vit_jax.sample --num_samples: chunks over devices and processes, resume after a
lost chunk or SIGTERM, latents decoded through the VAE, and the errors before compiling.

Tiny random DiTs saved in DiT's state-dict format; 2 DDIM steps, 20 samples in chunks of 8.
"""

import os
import pathlib
import re
import shutil
import signal
import socket
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from xla_test_flags import xla_flags

from vit_jax import diffusion as diffusion_lib
from vit_jax import errors
from vit_jax import sample
from vit_jax.checkpoints import dit_format
from vit_jax.diffusion import guidance
from vit_jax.diffusion import sharded_sampling
from vit_jax.evaluation import image_sources
from vit_jax.models import dit
from vit_jax.models import vae
from vit_jax.objectives import diffusion as diffusion_objective
from vit_jax.runtime import partitioning

ROOT = pathlib.Path(__file__).parents[1]
VAE = str(ROOT / 'tests' / 'fixtures' / 'vae_tiny')
N, CHUNK = 20, 8


def _save_dit(path, size, channels):
  """A DiT (width 16, one block, patch 2, 10 classes) with random weights (std 0.05; the
  original's zero initialisation would make a constant model)."""
  model = dit.DiT(num_classes=10, patch_size=2, hidden_size=16, depth=1, num_heads=2)
  x, y = jnp.zeros((1, size, size, channels)), jnp.zeros((1,), jnp.int32)
  shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), x, y, y, train=False)['params'])
  rng = np.random.default_rng(channels)
  params = jax.tree.map(lambda s: rng.normal(0, 0.05, s.shape).astype(np.float32), shapes)
  np.savez(path, **dit_format.params_to_state_dict(params, grid_size=size // 2))
  return str(path)


@pytest.fixture(scope='module')
def dits(tmp_path_factory):
  folder = tmp_path_factory.mktemp('dits')
  return {
      'rgb': _save_dit(folder / 'rgb.npz', 8, 3),
      'gray': _save_dit(folder / 'gray.npz', 8, 1),
      'latent': _save_dit(folder / 'latent.npz', 4, 4),
  }


def _run(checkpoint, out, seed=0, num_samples=N, vae_path=None, mesh=None, **diffusion):
  config, params, step = sample.load(checkpoint)
  config.diffusion.update(
      dict(dict(sample_steps=2, sampler='ddim', sample_batch=CHUNK), **diffusion)
  )
  return sample.sample_at_scale(
      config,
      params,
      str(out),
      num_samples=num_samples,
      seed=seed,
      checkpoint=checkpoint,
      step=step,
      mesh=mesh or partitioning.create_mesh({'data': -1}),
      vae=vae_path,
  )


def _arrays(out):
  with np.load(pathlib.Path(out) / 'samples.npz') as data:
    return data['arr_0'], data['arr_1']


@pytest.fixture(scope='module')
def reference(dits, tmp_path_factory):
  """20 samples of seed 0 in 3 chunks, on the 8 devices of the test process."""
  out = tmp_path_factory.mktemp('reference')
  assert _run(dits['rgb'], out) == 0
  return out


def test_seed_gives_the_samples_and_labels_in_adms_layout(dits, reference, tmp_path):
  images, labels = _arrays(reference)
  assert images.shape == (N, 8, 8, 3) and images.dtype == np.uint8
  expected = [sharded_sampling.chunk_labels(0, k, CHUNK, 10) for k in range(3)]
  np.testing.assert_array_equal(labels, np.concatenate(expected)[:N])  # a function of (seed, k)
  assert len(set(labels.tolist())) > 3 and images.std() > 10
  assert image_sources.NpzImages(str(reference / 'samples.npz')).shape == images.shape
  assert _run(dits['rgb'], tmp_path / 'again') == 0
  again = _arrays(tmp_path / 'again')
  np.testing.assert_array_equal(again[0], images)
  assert _run(dits['rgb'], tmp_path / 'seed1', seed=1) == 0
  other = _arrays(tmp_path / 'seed1')
  assert not np.array_equal(other[0], images) and not np.array_equal(other[1], labels)


def test_a_lost_chunk_is_sampled_again_and_only_it(dits, reference, tmp_path, capsys):
  out = tmp_path / 'out'
  shutil.copytree(reference, out)
  chunks = out / 'chunks'
  os.remove(chunks / 'chunk_00001.npz')
  os.remove(out / 'samples.npz')
  before = {p.name: p.stat().st_mtime_ns for p in chunks.iterdir()}
  capsys.readouterr()
  assert _run(dits['rgb'], out) == 0
  log = capsys.readouterr().err
  assert '2 of 3 chunks already in' in log and 'sampling the 1 missing: [1]' in log
  assert 'chunk 2/3 written' in log and 'chunk 1/3' not in log and 'chunk 3/3' not in log
  assert {p.name: p.stat().st_mtime_ns for p in chunks.iterdir() if p.name in before} == before
  assert (out / 'samples.npz').read_bytes() == (reference / 'samples.npz').read_bytes()


def test_sigterm_stops_after_a_whole_chunk_and_the_rerun_finishes(
    dits, reference, tmp_path, monkeypatch
):
  make = sharded_sampling.make_chunk_fn

  def signalling(*args):
    run = make(*args)

    def first_chunk_then_sigterm(*inputs):
      images = run(*inputs)
      signal.raise_signal(signal.SIGTERM)  # arrives while the chunk is being computed
      return images

    return first_chunk_then_sigterm

  monkeypatch.setattr(sharded_sampling, 'make_chunk_fn', signalling)
  out = tmp_path / 'out'
  assert _run(dits['rgb'], out) == 128 + signal.SIGTERM
  assert [p.name for p in (out / 'chunks').iterdir()] == ['chunk_00000.npz']
  assert not (out / 'samples.npz').exists()
  monkeypatch.setattr(sharded_sampling, 'make_chunk_fn', make)
  assert _run(dits['rgb'], out) == 0
  assert (out / 'samples.npz').read_bytes() == (reference / 'samples.npz').read_bytes()


def test_latents_are_decoded_through_the_vae_and_gray_becomes_rgb(dits, tmp_path):
  assert _run(dits['latent'], tmp_path / 'latent', num_samples=10, vae_path=VAE) == 0
  images, labels = _arrays(tmp_path / 'latent')
  assert images.shape == (10, 8, 8, 3) and images.dtype == np.uint8  # 4x4x4 latents, VAE f=2
  # The first chunk again, sampled and decoded in separate steps: the same images.
  config, params, _ = sample.load(dits['latent'])
  config.diffusion.update(sample_steps=2, sampler='ddim', sample_batch=CHUNK)
  model = diffusion_objective.Diffusion().make_model(config, 10)
  process = diffusion_lib.create_diffusion('ddim2', learn_sigma=True)
  sampler = guidance.make_sampler(model, process, (4, 4, 4), sampler='ddim', cfg_scale=1.5)
  key = jax.random.fold_in(jax.random.PRNGKey(0), 0)
  latents = sampler(params, labels[:CHUNK], key)
  module, vae_params = vae.load(VAE)
  decoded = vae.decode_latents(module, vae_params, np.asarray(latents))
  expected = np.clip(np.round((decoded + 1) * 127.5), 0, 255).astype(np.uint8)
  assert np.abs(expected.astype(int) - images[:CHUNK]).max() <= 1

  assert _run(dits['gray'], tmp_path / 'gray', num_samples=8, guide_channels=None) == 0
  gray, _ = _arrays(tmp_path / 'gray')
  assert gray.shape == (8, 8, 8, 3)
  assert np.array_equal(gray[..., 0], gray[..., 1]) and np.array_equal(gray[..., 0], gray[..., 2])


def test_an_out_dir_of_other_settings_is_refused_and_left_alone(dits, reference, tmp_path):
  before = sorted(p.name for p in reference.rglob('*'))
  with pytest.raises(errors.UserInputError, match=r'made with seed=0 .* not seed=3'):
    _run(dits['rgb'], reference, seed=3)
  with pytest.raises(errors.UserInputError, match=r'made with chunk_size=8 .* not chunk_size=16'):
    _run(dits['rgb'], reference, sample_batch=16)
  assert sorted(p.name for p in reference.rglob('*')) == before
  (tmp_path / 'chunks').mkdir()
  (tmp_path / 'chunks' / 'chunk_00000.npz').write_bytes(b'x')
  with pytest.raises(errors.UserInputError, match='without the sampling.json'):
    _run(dits['rgb'], tmp_path)
  with pytest.raises(errors.UserInputError, match='give --vae=FOLDER'):
    _run(dits['latent'], tmp_path / 'nodecoder')
  with pytest.raises(errors.UserInputError, match='num_samples=0 must be >= 1'):
    _run(dits['rgb'], tmp_path / 'none', num_samples=0)


def _env(devices):
  env = dict(
      os.environ,
      XLA_FLAGS=xla_flags(devices),
      JAX_PLATFORMS='cpu',
      TF_CPP_MIN_LOG_LEVEL='2',
      VIT_JAX_TCMALLOC='0',
  )
  env.pop('JAX_COORDINATOR_ADDRESS', None)
  return env


def _command(checkpoint, out, *extra):
  return [
      sys.executable,
      '-m',
      'vit_jax.sample',
      f'--checkpoint={checkpoint}',
      f'--out={out}',
      '--steps=2',
      '--sampler=ddim',
      f'--batch={CHUNK}',
      *extra,
  ]


@pytest.mark.parametrize(
    'flag,message',
    [
        ('--num_samples=0', r'--num_samples=0 must be >= 1'),
        ('--labels=1,2', r'drop --labels \(or drop --num_samples'),
    ],
)
def test_the_command_names_a_bad_request_in_one_line(tmp_path, flag, message):
  extra = [flag] if flag.startswith('--num') else ['--num_samples=10', flag]
  done = subprocess.run(
      _command(tmp_path / 'missing.npz', tmp_path / 'out', *extra),
      env=_env(1),
      cwd=ROOT,
      capture_output=True,
      text=True,
      timeout=120,
      check=False,
  )
  assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1, done.stderr
  assert done.stderr.startswith('error: ') and re.search(message, done.stderr)
  assert not (tmp_path / 'out').exists()


def _free_port():
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_of_2_devices_write_what_one_process_of_4_writes(dits, tmp_path):
  """The pair runs the command line (each process 2 simulated CPU devices); the single
  process is this one, on 4 of its devices."""
  port, logs, procs = _free_port(), [], []
  for i in range(2):
    logs.append(open(tmp_path / f'{i}.log', 'w+'))  # a full pipe would block a process
    procs.append(
        subprocess.Popen(
            _command(
                dits['rgb'],
                tmp_path / 'pair',
                f'--num_samples={N}',
                f'--coordinator_address=127.0.0.1:{port}',
                '--num_processes=2',
                f'--process_id={i}',
            ),
            env=_env(2),
            cwd=ROOT,
            stdout=logs[-1],
            stderr=subprocess.STDOUT,
        )
    )
  try:
    four = partitioning.create_mesh({'data': -1}, devices=jax.devices()[:4])
    assert _run(dits['rgb'], tmp_path / 'single', mesh=four) == 0
    codes = [p.wait(timeout=150) for p in procs]
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
  texts = []
  for log in logs:
    log.seek(0)
    texts.append(log.read()[-3000:])
    log.close()
  assert codes == [0, 0], texts
  assert 'chunk 3/3 written' in texts[0]  # process 0 reports
  single = (tmp_path / 'single' / 'samples.npz').read_bytes()
  assert (tmp_path / 'pair' / 'samples.npz').read_bytes() == single
