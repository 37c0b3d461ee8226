"""Diffusion through the one train loop: DiT's loss, EMA, bitwise resume, sample grids, FID
in classifier features, conditional accuracy, the sample command and its errors."""

import os
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image
import pytest

from vit_jax import config_checks
from vit_jax import errors
from vit_jax import objectives
from vit_jax import train
from vit_jax.checkpoints import orbax_state
from vit_jax.configs import dit as dit_configs
from vit_jax.configs import pit as pit_configs
from vit_jax.diffusion import guidance
from vit_jax.objectives import diffusion as diffusion_objective
from vit_jax.runtime import partitioning
from vit_jax.training import metrics

ROOT = pathlib.Path(__file__).parents[1]


def tiny_dit_config(data_dir, **overrides):
  """The Fashion-MNIST DiT preset shrunk to seconds: width 16, one block, patch 2 at 14x14."""
  config = dit_configs.get_config('fashion_mnist')
  config.unlock()
  config.update_from_flattened_dict(
      {
          'tfds_data_dir': data_dir,
          'batch': 16,
          'batch_eval': 1000,
          'model.hidden_size': 16,
          'model.depth': 1,
          'model.num_heads': 2,
          'model.patch_size': 2,
          'total_steps': 4,
          'warmup_steps': 1,
          'eval_every': 0,
          'progress_every': 2,
          'checkpoint_every': 2,
          'ema_decay': 0.9,
          # Slices keep the FID reference features (test and train splits) to seconds.
          'pp.train': 'train[:2000]',
          'pp.test': 'test[:1000]',
          'mesh.data': -1,
          'diffusion.sample_steps': 3,
          'diffusion.eval_samples_per_class': 2,
          'diffusion.sample_batch': 8,
      }
  )
  config.update_from_flattened_dict(overrides)
  return config.lock()


@pytest.mark.slow
def test_loss_is_dits_hybrid_loss_on_uniform_timesteps():
  """The objective's loss equals training_losses of the same draws, computed by hand."""
  config = tiny_dit_config(None)
  objective = objectives.get(config)
  model = objective.make_model(config, 10)
  params = model.init(jax.random.key(0), *objective.init_inputs(config, (14, 14, 1)), train=False)[
      'params'
  ]
  images = jax.random.uniform(jax.random.key(1), (4, 14, 14, 1), minval=-1, maxval=1)
  labels = jax.nn.one_hot(jnp.array([0, 3, 5, 9]), 10)
  rng = jax.random.key(2)
  loss, terms = objective.make_loss_fn(model, config, 10)(params, images, labels, rng)
  process = diffusion_objective.train_diffusion(config)
  t = jax.random.randint(jax.random.fold_in(rng, 1), (4,), 0, 1000)
  noise = jax.random.normal(jax.random.fold_in(rng, 2), images.shape)
  fn = lambda x, t: model.apply(
      {'params': params}, x, t, jnp.array([0, 3, 5, 9]), train=True, rngs={'dropout': rng}
  )
  expected = process.training_losses(fn, images, t, noise)
  np.testing.assert_allclose(loss, expected['loss'].mean(), rtol=1e-6)
  np.testing.assert_allclose(terms['vb'], expected['vb'].mean(), rtol=1e-6)
  assert float(terms['mse']) > float(terms['vb']) > 0


@pytest.mark.slow
@pytest.mark.long
def test_diffusion_run_resumes_bitwise_writes_samples_and_sample_metrics(
    fashion_mnist_data_dir, tmp_path
):
  config = tiny_dit_config(fashion_mnist_data_dir)
  straight = train.train_and_evaluate(config, str(tmp_path / 'straight'))
  halted = tiny_dit_config(fashion_mnist_data_dir, total_steps=2)
  train.train_and_evaluate(halted, str(tmp_path / 'resumed'))
  resumed = train.train_and_evaluate(config, str(tmp_path / 'resumed'))
  for name in ('straight', 'resumed'):
    assert (tmp_path / name / 'samples' / 'step_0000004.png').exists()
  a = orbax_state.load_params(str(tmp_path / 'straight' / 'checkpoints'), prefer_ema=True)
  b = orbax_state.load_params(str(tmp_path / 'resumed' / 'checkpoints'), prefer_ema=True)
  raw = orbax_state.load_params(str(tmp_path / 'straight' / 'checkpoints'))
  assert jax.tree.all(jax.tree.map(np.array_equal, a, b))  # EMA resumed bitwise
  assert not jax.tree.all(jax.tree.map(np.array_equal, a, raw))  # and it is not the params
  for key in (
      'eval_loss',
      'eval_mse',
      'eval_vb',
      'eval_fid_classifier_features',
      'eval_conditional_accuracy',
      'eval_fid_classifier_features_test_vs_train',
  ):
    assert straight[key] == resumed[key], key
  assert 0 <= straight['eval_conditional_accuracy'] <= 1
  assert (
      straight['eval_fid_classifier_features']
      > straight['eval_fid_classifier_features_test_vs_train']
      > 0
  )
  logged = metrics.read_jsonl(str(tmp_path / 'straight'))
  assert {'train_mse', 'train_vb'} <= set(logged[0])
  grid = np.asarray(Image.open(tmp_path / 'straight' / 'samples' / 'step_0000004.png'))
  assert grid.shape == (2 * (10 * 15 + 1), 2 * (2 * 15 + 1))  # a row per class, 2x scale

  # The sample command on the workdir: EMA params, a grid and ADM's npz layout, one seed.
  out = tmp_path / 'cli'
  env = dict(os.environ, JAX_PLATFORMS='cpu', VIT_JAX_TCMALLOC='0')
  command = [
      sys.executable,
      '-m',
      'vit_jax.sample',
      f'--checkpoint={tmp_path / "straight"}',
      '--labels=1,7',
      '--per_class=4',
      '--steps=3',
      '--batch=8',
      '--seed=5',
  ]
  done = subprocess.run(
      command + [f'--out={out}'], env=env, capture_output=True, text=True, timeout=300, check=False
  )
  assert done.returncode == 0, done.stderr[-2000:]
  with np.load(out / 'samples.npz') as data:
    assert data['arr_0'].shape == (8, 14, 14, 1) and data['arr_0'].dtype == np.uint8
    assert list(data['arr_1']) == [1, 1, 1, 1, 7, 7, 7, 7]
    cli_images = data['arr_0']
  assert Image.open(out / 'samples.png').size[1] > 0
  mesh = partitioning.create_mesh({'data': -1})
  saved = dict(config.diffusion, sample_steps=3, sample_batch=8)
  with config.unlocked():
    config.diffusion.update(saved)
  with jax.set_mesh(mesh):
    again = diffusion_objective.Diffusion().generate(config, a, np.repeat([1, 7], 4), 5, mesh)
  np.testing.assert_array_equal(
      np.clip(np.round((again + 1) * 127.5), 0, 255).astype(np.uint8), cli_images
  )
  bad = subprocess.run(
      command + [f'--out={tmp_path / "bad"}', '--labels=10'],
      env=env,
      capture_output=True,
      text=True,
      timeout=300,
      check=False,
  )
  assert bad.returncode == 2 and 'class ids must be in 0..9' in bad.stderr
  assert 'Traceback' not in bad.stderr


@pytest.mark.parametrize(
    'overrides,message',
    [
        ({'pp.mixup': 0.2}, r'config\.pp\.mixup=0\.2 mixes images'),
        ({'label_smoothing': 0.1}, 'smooths class targets'),
        ({'diffusion.cfg_scale': 0.5}, r'cfg_scale=0\.5 must be >= 1'),
        ({'diffusion.sampler': 'ddimm'}, "did you mean 'ddim'"),
        ({'diffusion.sample_steps': 1001, 'diffusion.sampler': 'ddpm'}, 'does not respace'),
        ({'pp.crop': 13}, r'config\.pp\.crop=13 is not divisible by config\.model\.patch_size'),
        ({'diffusion.guide_channels': 3}, r'must be in 1\.\.1'),
        ({'diffusion.sample_batch': 12}, 'sample_batch'),
        ({'diffusion.feature_network': '/nope/net'}, 'does not exist'),
    ],
)
def test_bad_diffusion_configs_are_one_clear_error(overrides, message):
  config = tiny_dit_config(None, **overrides)
  with pytest.raises(errors.UserInputError, match=message):
    config_checks.validate(config, partitioning.create_mesh(config.mesh))


def test_a_classifier_head_config_with_diffusion_names_the_field():
  config = tiny_dit_config(None).unlock()
  config.model.classifier = 'gap'
  with pytest.raises(errors.UserInputError, match=r'config\.model\.classifier is not a field'):
    config_checks.validate(config, partitioning.create_mesh(config.mesh))
  vit_config = pit_configs.get_config('fashion_mnist').unlock()
  vit_config.objective = 'diffusion'
  with pytest.raises(errors.UserInputError, match='config.diffusion'):
    config_checks.validate(vit_config, partitioning.create_mesh(vit_config.mesh))


def test_sampling_checks_labels_and_guidance_before_compiling():
  config = tiny_dit_config(None)
  objective = objectives.get(config)
  model = objective.make_model(config, 10)
  process = diffusion_objective.train_diffusion(config)
  with pytest.raises(errors.UserInputError, match='cfg_scale'):
    guidance.make_sampler(model, process, (14, 14, 1), cfg_scale=0.5)
  sample = guidance.make_sampler(model, process, (14, 14, 1), cfg_scale=2.0, guide_channels=None)
  with pytest.raises(errors.UserInputError, match='null class'):
    sample({}, np.array([10]), jax.random.key(0))
