"""Latents on disk end to end: Fashion-MNIST through the tiny random VAE into array_record
shards (python -m vit_jax.encode_latents), a DiT trained on them, its sample grid decoded by
the VAE; resuming a killed encode; the mistakes, each one line before anything compiles."""

import json
import os
import pathlib
import shutil
import subprocess
import sys

import numpy as np
from PIL import Image
import pytest

from vit_jax import encode_latents
from vit_jax import errors
from vit_jax import input_pipeline
from vit_jax import train
from vit_jax.configs import dit as dit_configs
from vit_jax.datasets import latents
from vit_jax.datasets import tfds_source
from vit_jax.evaluation import image_grid
from vit_jax.evaluation import image_sources
from vit_jax.models import vae

VAE = str(pathlib.Path(__file__).parent / 'fixtures' / 'vae_tiny')  # 16x16x3 -> 8x8x4


def _encode(data_dir, out, split, **kwargs):
  lines = []
  kwargs = dict(dict(image_size=16, shard_size=8, batch_per_device=1), **kwargs)
  written = encode_latents.encode(
      'fashion_mnist', VAE, out, split=split, data_dir=data_dir, log=lines.append, **kwargs
  )
  return written, lines


@pytest.fixture(scope='module')
def root(fashion_mnist_data_dir, tmp_path_factory):
  """ROOT/train: 24 images and their mirror images (posterior samples, 3 shards);
  ROOT/test: 8 images (posterior means, 1 shard)."""
  root = tmp_path_factory.mktemp('latents')
  _encode(fashion_mnist_data_dir, str(root / 'train'), 'train[:24]', flip_copy=True)
  _encode(fashion_mnist_data_dir, str(root / 'test'), 'test[:8]', posterior='mean')
  return root


def _config(root, **overrides):
  """A DiT of width 16 and one block on the 8x8x4 latents, 3 steps, one sample per class."""
  config = dit_configs.get_config('fashion_mnist')
  config.unlock()
  config.update_from_flattened_dict(
      {
          'dataset': f'latents:{root}',
          'pp.train': 'train',
          'pp.test': 'test',
          'pp.crop': 8,
          'pp.channels': 4,
          'pp.on_device': False,
          'batch': 8,
          'batch_eval': 8,
          'model.hidden_size': 16,
          'model.depth': 1,
          'model.num_heads': 2,
          'model.patch_size': 2,
          'total_steps': 3,
          'warmup_steps': 1,
          'eval_every': 0,
          'progress_every': 1,
          'checkpoint_every': 3,
          'mesh.data': -1,
          'diffusion.sample_steps': 2,
          'diffusion.eval_samples_per_class': 1,
          'diffusion.sample_batch': 16,
          'diffusion.feature_network': None,
          'diffusion.vae': VAE,
      }
  )
  config.update_from_flattened_dict(overrides)
  return config.lock()


def _records(config, split):
  source = input_pipeline.split_source(config, split)
  pairs = [source.example_fn(i)[:2] for i in range(source.n)]
  return np.stack([p[0].numpy() for p in pairs]), np.array([int(p[1]) for p in pairs])


def test_shards_hold_the_vae_latents_of_adm_crops(root, fashion_mnist_data_dir):
  meta = json.loads((root / 'train' / 'latents.json').read_text())
  assert meta['shape'] == [8, 8, 4] and meta['count'] == 48 and meta['num_classes'] == 10
  assert meta['class_names'][0] == 'T-shirt/top' and meta['flip_copy']
  assert len(meta['shards']) == 3 and meta['scale_factor'] == pytest.approx(0.18215)
  # The test split's posterior means equal the VAE's encoding of ADM's 16x16 center crops.
  config = _config(root)
  got, labels = _records(config, 'test')
  images, want_labels, _ = tfds_source.in_memory(
      _config(root, dataset='fashion_mnist', tfds_data_dir=fashion_mnist_data_dir), 'test'
  )
  crops = np.stack([image_sources.center_crop(Image.fromarray(a[..., 0]), 16) for a in images[:8]])
  module, params = vae.load(VAE)
  want = vae.encode_to_latents(module, params, crops.astype(np.float32) / 127.5 - 1)
  np.testing.assert_allclose(got, want, atol=1e-5)
  np.testing.assert_array_equal(labels, want_labels[:8])
  # A flip copy: record 2i + 1 is image i mirrored, with its label; a slice holds out the end.
  train_latents, train_labels = _records(config, 'train')
  np.testing.assert_array_equal(train_labels[0::2], train_labels[1::2])
  assert input_pipeline.get_dataset_info(config, 'train[-8:]')['num_examples'] == 8
  np.testing.assert_array_equal(_records(config, 'train[40:]')[0], train_latents[40:])


@pytest.fixture(scope='module')
def run(root, tmp_path_factory):
  """(workdir, result) of 3 DiT steps on the latents."""
  workdir = str(tmp_path_factory.mktemp('run') / 'run')
  return workdir, train.train_and_evaluate(_config(root), workdir)


def test_dit_trains_on_latents_and_writes_decoded_samples(run):
  workdir, result = run
  assert result['step'] == 3 and np.isfinite(result['eval_loss'])
  assert result['eval_examples'] == 8
  grid = Image.open(os.path.join(workdir, 'samples', 'step_0000003.png'))
  # A row per class of one 16x16x3 decoded image each, not the 8x8x4 latents.
  want = image_grid.grid(np.zeros((10, 16, 16, 3), np.float32), rows=10)
  assert grid.mode == 'RGB' and grid.size == (want.shape[1], want.shape[0])


def test_the_runs_samples_are_decoded_and_scored_with_inception_fid_and_is(
    run, root, fashion_mnist_data_dir, tmp_path
):
  """The rest of the paper's pipeline on the trained run: sampling at scale from the workdir
  (the VAE from its config), then Inception FID and IS against the test images' statistics,
  with generated Inception weights."""
  import jax

  from vit_jax import evaluate
  from vit_jax import sample
  from vit_jax.evaluation import inception
  from vit_jax.runtime import partitioning

  sys.path.insert(0, os.path.join(os.path.dirname(__file__), 'fixtures'))
  import inception_random_weights

  workdir, _ = run
  config, params, step = sample.load(workdir)
  assert step == 3
  mesh = partitioning.create_mesh({'data': -1}, devices=jax.devices()[:2])
  out = str(tmp_path / 'samples')
  status = sample.sample_at_scale(
      config, params, out, num_samples=20, seed=0, checkpoint=workdir, step=step, mesh=mesh
  )
  assert status == 0
  with np.load(os.path.join(out, 'samples.npz')) as f:
    images, labels = f['arr_0'], f['arr_1']
  assert images.shape == (20, 16, 16, 3) and images.dtype == np.uint8  # decoded, not latents
  assert labels.shape == (20,) and 0 <= labels.min() and labels.max() < 10
  weights = str(tmp_path / 'inception.npz')
  np.savez(weights, **inception_random_weights.state_dict(inception.state_dict_shapes()))
  # The reference: ADM's 16x16 center crops of the 8 test images the latents were made of.
  gray, _, _ = tfds_source.in_memory(
      _config(root, dataset='fashion_mnist', tfds_data_dir=fashion_mnist_data_dir), 'test'
  )
  crops = [image_sources.center_crop(Image.fromarray(a[..., 0]), 16) for a in gray[:8]]
  reference = str(tmp_path / 'reference.npz')
  np.savez(reference, arr_0=np.stack(crops).astype(np.uint8))
  samples = os.path.join(out, 'samples.npz')
  metrics = evaluate.evaluate(weights, reference, samples=samples, batch=2, mesh=mesh)
  assert metrics['num_samples'] == 20 and np.isfinite(metrics['fid']) and metrics['fid'] > 0
  assert 1 <= metrics['inception_score'] <= 1008


def test_a_killed_encode_redoes_only_its_unfinished_shards(root, fashion_mnist_data_dir, tmp_path):
  out = tmp_path / 'train'
  shutil.copytree(root / 'train', out)
  before = {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in out.glob('*.array_record')}
  lost = meta_shard = json.loads((out / 'latents.json').read_text())['shards'][1]
  (out / lost).unlink()
  (out / (lost + '.incomplete')).write_bytes(b'half a shard')  # what a kill leaves
  with pytest.raises(errors.MissingInputError, match=f'1 of 3 latent shards are missing.*{lost}'):
    latents.read_metadata(str(out))
  written, lines = _encode(fashion_mnist_data_dir, str(out), 'train[:24]', flip_copy=True)
  assert written == [1] and sum('exists, skipped' in line for line in lines) == 2
  for path in out.glob('*.array_record'):
    mtime, data = before[path.name]
    assert data == path.read_bytes()  # the rewritten shard too: noise drawn per record
    assert (path.stat().st_mtime_ns == mtime) == (path.name != meta_shard)
  assert not list(out.glob('*.incomplete'))
  with pytest.raises(
      errors.UserInputError, match=r'another encode \(shape: \[8, 8, 4\] there, \[16, 16, 4\]'
  ):
    _encode(fashion_mnist_data_dir, str(out), 'train[:24]', flip_copy=True, image_size=32)


@pytest.mark.parametrize(
    'overrides, match',
    [
        ({'pp.channels': 3}, r'config.pp.channels=3, but the latents .* are 8x8x4; set .*=4'),
        ({'pp.crop': 16}, r'config.pp.crop=16, but the latents .* are 8x8x4; set .*crop=8'),
        ({'model.patch_size': 3}, r'config.pp.crop=8 is not divisible by .*patch_size=3'),
        ({'pp.inception_crop': True}, r'inception_crop=True crops pixels.*holds latents'),
        ({'pp.test': 'validation'}, r'no latents.json: it is not a folder of latents'),
        ({'diffusion.vae': '/nowhere/vae'}, r"diffusion.vae='/nowhere/vae' is not a diffusers"),
        ({'diffusion.feature_network': 'package:fashion_mnist14_classifier'}, r'latent run'),
    ],
)
def test_mismatches_are_one_error_before_compiling(root, tmp_path, overrides, match):
  with pytest.raises(errors.UserInputError, match=match):
    train.train_and_evaluate(_config(root, **overrides), str(tmp_path / 'run'))
  assert not (tmp_path / 'run').exists()


def test_the_imagenet_recipes_name_the_encode_command_until_their_folder_is_set():
  config = dit_configs.get_config('imagenet256_pit_l')
  with pytest.raises(errors.UserInputError, match=r"'latents:' names no folder.*encode_latents"):
    input_pipeline.check_splits(config)


def test_encode_command_errors_are_one_line(tmp_path):
  env = dict(os.environ, PYTHONPATH=str(pathlib.Path(__file__).parents[1]))
  for args, match in (
      (['--dataset=latents:/x'], 'is latents already'),
      (['--dataset=fashion_mnist', '--posterior=mode'], '--posterior'),
      (['--dataset=fashion_mnist', '--shard_size=0'], '--shard_size=0 must be >= 1'),
  ):
    run = subprocess.run(
        [sys.executable, '-m', 'vit_jax.encode_latents', f'--vae={VAE}', f'--out={tmp_path}']
        + args,
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert run.returncode == 2 and run.stderr.startswith('error: '), run.stderr
    assert match in run.stderr and len(run.stderr.strip().splitlines()) == 1


def test_image_size_must_suit_the_vae(fashion_mnist_data_dir, tmp_path):
  with pytest.raises(errors.UserInputError, match=r'--image_size=15 must be a multiple of .* 2'):
    _encode(fashion_mnist_data_dir, str(tmp_path / 'x'), 'test[:2]', image_size=15)
