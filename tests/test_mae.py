"""Masked autoencoder: masking, token order, loss, encoder = ViT, schedules, train loop."""

import functools
import os
import shutil

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from vit_jax import checkpoint
from vit_jax import config_checks
from vit_jax import errors
from vit_jax import train
from vit_jax.checkpoints import orbax_state
from vit_jax.configs import mae as mae_configs
from vit_jax.configs import models as model_configs
from vit_jax.models import mae
from vit_jax.models import VisionTransformer
from vit_jax.runtime import partitioning
from vit_jax.training import metrics
from vit_jax.training import steps


def _pit(classifier='gap', heads=2, impl='dense'):
  """A PiT with 8x8 pixel tokens, width 16, one block."""
  config = {
      'model_name': 'PiT-test',
      'patches': {'size': (1, 1)},
      'hidden_size': 16,
      'classifier': classifier,
      'representation_size': None,
      'posemb': 'sincos2d',
      'transformer': model_configs.transformer_config(32, heads, 1).to_dict(),
  }
  config['transformer']['attention'] = {'impl': impl, 'block_size': 8, 'kernel': 'auto'}
  return config


_DECODER = {'hidden_size': 16, 'num_layers': 1, 'num_heads': 4, 'mlp_dim': 32, 'posemb': 'sincos2d'}


@pytest.mark.parametrize('tokens,ratio', [(20, 0.75), (49, 0.5), (16, 0.0)])
def test_masking_keeps_the_configured_count_and_unshuffle_matches_numpy(tokens, ratio):
  visible, restore, mask = jax.device_get(
      mae.random_masking(jax.random.PRNGKey(1), 3, tokens, ratio)
  )
  keep = int(tokens * (1 - ratio))
  assert visible.shape == (3, keep)
  np.testing.assert_array_equal(mask.sum(1), tokens - keep)
  for i in range(3):  # the visible tokens are exactly the unmasked ones, each once
    assert sorted(visible[i]) == sorted(np.flatnonzero(mask[i] == 0))
  # Decoder input: encoded visible tokens back at their image positions, the mask token
  # elsewhere; built here by scattering in numpy.
  encoded = np.random.RandomState(0).randn(3, keep, 5).astype(np.float32)
  mask_token = np.arange(5, dtype=np.float32)[None, None] - 10.0
  expected = np.broadcast_to(mask_token, (3, tokens, 5)).copy()
  for i in range(3):
    expected[i, visible[i]] = encoded[i]
  np.testing.assert_array_equal(mae.unshuffle(encoded, mask_token, restore), expected)
  assert len(set(map(tuple, visible))) == 3  # per-example masks


def test_patchify_round_trips_and_orders_tokens_row_major():
  images = np.random.RandomState(0).randn(2, 6, 4, 3).astype(np.float32)
  tokens = mae.patchify(images, (2, 2))
  assert tokens.shape == (2, 6, 12)
  np.testing.assert_array_equal(tokens[1, 3], images[1, 2:4, 2:4].reshape(-1))  # row 1, col 1
  np.testing.assert_array_equal(mae.unpatchify(tokens, (2, 2), (6, 4, 3)), images)
  normed = mae.reconstruction_target(images, (2, 2), True)
  np.testing.assert_allclose(normed.mean(-1), 0, atol=1e-5)
  np.testing.assert_allclose(normed.std(-1), 1, atol=1e-3)


def test_loss_ignores_visible_tokens():
  rng = np.random.RandomState(0)
  target = rng.randn(2, 10, 3).astype(np.float32)
  mask = np.zeros((2, 10), np.float32)
  mask[:, 7:] = 1.0
  predictions = target.copy()
  predictions[:, :7] += 100.0  # wrong everywhere the encoder saw the token: costs nothing
  np.testing.assert_allclose(mae.per_example_loss(predictions, target, mask), 0.0)
  predictions[0, 8] += 3.0  # one masked token off by 3 in each of its 3 values
  np.testing.assert_allclose(
      mae.per_example_loss(predictions, target, mask), [9.0 / 3, 0.0], rtol=1e-6
  )
  grads = jax.grad(lambda p: mae.per_example_loss(p, target, mask).sum())(predictions)
  assert not np.any(np.asarray(grads)[:, :7])


@pytest.mark.parametrize('classifier', ['gap', 'token'])
@pytest.mark.slow
def test_mask_ratio_zero_encoder_equals_vit_pre_logits(classifier):
  model = mae.MaskedAutoencoder(encoder=_pit(classifier), decoder=_DECODER, mask_ratio=0.0)
  images = jax.random.normal(jax.random.PRNGKey(0), (3, 8, 8, 1))
  variables = model.init(jax.random.PRNGKey(1), images, train=False)
  (predictions, mask), state = model.apply(
      variables, images, train=False, capture_intermediates=lambda m, _: m.name == 'encoder'
  )
  assert predictions.shape == (3, 64, 1) and not np.any(mask)
  tokens = state['intermediates']['encoder']['__call__'][0]  # shuffled order, all 64 kept
  assert tokens.shape == (3, 64 + (classifier == 'token'), 16)
  pooled = tokens[:, 0] if classifier == 'token' else tokens.mean(1)
  vit = VisionTransformer(num_classes=0, **_pit(classifier))
  pre_logits = vit.apply({'params': variables['params']['encoder']}, images, train=False)
  np.testing.assert_allclose(pooled, pre_logits, rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_pretrained_encoder_loads_into_a_classifier_with_no_missing_keys(tmp_path):
  model = mae.MaskedAutoencoder(encoder=_pit('token'), decoder=_DECODER)
  images = jnp.zeros((1, 8, 8, 1))
  params = model.init(jax.random.PRNGKey(1), images, train=False)['params']
  assert set(params) == {'encoder', 'decoder', 'decoder_embed', 'decoder_pred', 'mask_token'}
  checkpoint.save(params['encoder'], str(tmp_path / 'encoder.npz'))
  classifier = VisionTransformer(num_classes=10, **_pit('token'))
  init = classifier.init(jax.random.PRNGKey(2), images, train=False)['params']
  loaded = checkpoint.load_pretrained(
      pretrained_path=str(tmp_path / 'encoder.npz'),
      init_params=init,
      model_config=_pit('token'),
      strict=True,
  )
  jax.tree.map(
      np.testing.assert_array_equal,
      {k: v for k, v in loaded.items() if k != 'head'},
      jax.device_get(params['encoder']),
  )
  np.testing.assert_array_equal(loaded['head']['kernel'], init['head']['kernel'])


@functools.cache
def _mae_loss_and_grads(impl):
  """Masked-reconstruction loss and gradients of a PiT MAE (8 devices: data 2 x seq 4)."""
  mesh = partitioning.create_mesh({'data': 2, 'seq': 4})
  images = jax.random.normal(jax.random.PRNGKey(0), (4, 8, 8, 3))
  target = mae.reconstruction_target(images, (1, 1), norm_pix_loss=True)
  model = mae.MaskedAutoencoder(encoder=_pit('token', heads=4, impl=impl), decoder=_DECODER)

  def loss(p):
    predictions, mask = model.apply(
        {'params': p}, images, train=True, rngs={'masking': jax.random.PRNGKey(2)}
    )
    return mae.per_example_loss(predictions, target, mask).mean()

  with jax.set_mesh(mesh):
    params = model.init(jax.random.PRNGKey(1), images, train=False)['params']
    return jax.device_get(jax.jit(jax.value_and_grad(loss))(params))


@pytest.mark.parametrize('impl', ['blockwise', 'ring', 'allgather', 'ulysses'])
@pytest.mark.slow
def test_attention_schedules_match_dense_in_encoder_and_decoder(impl):
  (dense_loss, dense_grads), (loss, grads) = _mae_loss_and_grads('dense'), _mae_loss_and_grads(impl)
  np.testing.assert_allclose(loss, dense_loss, rtol=1e-5)
  jax.tree.map(
      lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-6), grads, dense_grads
  )


def tiny_mae_config(data_dir, recipe='fashion_mnist', **overrides):
  """configs/mae.py's Fashion-MNIST recipe shrunk to seconds: 8x8 pixels, width 16."""
  config = mae_configs.get_config(recipe)
  config.unlock()
  config.update_from_flattened_dict(
      {
          'tfds_data_dir': data_dir,
          'pp.crop': 8,
          'batch': 16,
          'batch_eval': 1000,
          'model.hidden_size': 16,
          'model.transformer.mlp_dim': 32,
          'model.transformer.num_heads': 2,
          'model.transformer.num_layers': 1,
          'total_steps': 4,
          'warmup_steps': 1,
          'progress_every': 2,
          'checkpoint_every': 2,
          'mesh.data': -1,
      }
  )
  if 'mae' in config:
    config.mae.decoder.update(_DECODER)
  config.update_from_flattened_dict(overrides)
  return config.lock()


@pytest.mark.slow
@pytest.mark.long
def test_mae_run_resumes_bitwise_and_exports_an_encoder_that_fine_tuning_loads(
    fashion_mnist_data_dir, tmp_path
):
  result = train.train_and_evaluate(
      tiny_mae_config(fashion_mnist_data_dir), str(tmp_path / 'straight')
  )
  assert result['step'] == 4 and result['eval_examples'] == 10_000
  assert 0 < result['eval_reconstruction_loss'] < 2 and 'eval_accuracy' not in result
  straight = orbax_state.load_params(str(tmp_path / 'straight' / 'checkpoints'), 4)
  # Killed after its step-2 checkpoint (the later one and the export lost) and restarted:
  # the same state at step 4, bit for bit, and the same exported encoder.
  shutil.copytree(tmp_path / 'straight', tmp_path / 'resumed')
  shutil.rmtree(tmp_path / 'resumed' / 'checkpoints' / '4')
  os.remove(tmp_path / 'resumed' / 'encoder.npz')
  again = train.train_and_evaluate(
      tiny_mae_config(fashion_mnist_data_dir), str(tmp_path / 'resumed')
  )
  assert again['eval_reconstruction_loss'] == result['eval_reconstruction_loss']
  resumed = orbax_state.load_params(str(tmp_path / 'resumed' / 'checkpoints'), 4)
  step_2 = [
      [r for r in metrics.read_jsonl(str(tmp_path / run)) if r['step'] == 2]
      for run in ('straight', 'resumed')
  ]
  assert step_2[0] == step_2[1]  # kept from before the restart: it resumed at step 2
  jax.tree.map(np.testing.assert_array_equal, resumed, straight)
  exported = [np.load(tmp_path / run / 'encoder.npz') for run in ('straight', 'resumed')]
  assert sorted(exported[0]) == sorted(exported[1])  # the resumed run's export: step 4 too
  for key in exported[0]:
    np.testing.assert_array_equal(exported[0][key], exported[1][key])
  # The exported encoder loads strictly into the fine-tuning classifier's first state.
  encoder = result['encoder_checkpoint']
  config = tiny_mae_config(
      fashion_mnist_data_dir, 'fashion_mnist_finetune', total_steps=2, pretrained_path=encoder
  )
  mesh = partitioning.create_mesh(config.mesh)
  model = train.make_model(config, 10)
  tx, _ = train.optim.make_optimizer(config)
  _, shardings = steps.abstract_train_state(config, model, tx, mesh, (8, 8, 1))
  first = steps.create_train_state(config, model, tx, shardings, (8, 8, 1))['params']
  jax.tree.map(
      np.testing.assert_array_equal,
      {k: v for k, v in jax.device_get(first).items() if k != 'head'},
      jax.device_get(straight['encoder']),
  )


@pytest.mark.parametrize(
    'overrides,message',
    [
        ({'mae.mask_ratio': 1.0}, r'config.mae.mask_ratio=1.0 must be in \[0, 1\)'),
        ({'mae.decoder.num_heads': 3}, 'mae.decoder.hidden_size=16 must be divisible'),
        ({'mae.decoder.num_layers': 0}, 'mae.decoder.num_layers=0 must be >= 1'),
        ({'mae.decoder.posemb': 'sincos'}, "did you mean 'sincos2d'"),
        ({'mae.norm_pix_loss': True}, 'single value of a 1x1 token of a 1-channel image'),
        ({'pp.mixup': 0.8}, 'config.pp.mixup=0.8 mixes images'),
        ({'pretrained_path': '/x.npz'}, 'MAE pre-training starts from scratch'),
        ({'objective': 'mea'}, "did you mean 'mae'"),
    ],
)
def test_bad_mae_config_is_one_clear_error(overrides, message):
  config = tiny_mae_config('/nonexistent', **overrides)
  mesh = partitioning.create_mesh(config.mesh)
  with pytest.raises(errors.UserInputError, match=message):
    config_checks.validate(config, mesh)


def test_mae_objective_without_its_fields_is_a_clear_error():
  config = mae_configs.get_config('fashion_mnist_finetune')
  config.unlock()
  config.objective = 'mae'
  with pytest.raises(errors.UserInputError, match='needs the config.mae fields'):
    config_checks.validate(config, partitioning.create_mesh(config.mesh))


def test_recipes_build():
  for recipe in ('pit_s', 'pit_b', 'vit_s2', 'vit_b2', 'fashion_mnist', 'fashion_mnist_vit2'):
    pretrain = mae_configs.get_config(recipe)
    finetune = mae_configs.get_config(recipe + '_finetune')
    assert pretrain.objective == 'mae' and finetune.objective == 'classification'
    assert pretrain.model.to_dict() == finetune.model.to_dict()
    assert pretrain.model.patches.size == ((2, 2) if 'vit' in recipe else (1, 1))
    assert pretrain.mae.mask_ratio == 0.75
    for config in (pretrain, finetune):  # every recipe passes the config checks
      config_checks.validate(config, partitioning.create_mesh(config.mesh))
  assert mae_configs.get_config('pit_s_finetune').layer_decay == 0.75
  assert mae_configs.get_config('pit_b').model.hidden_size == 768
  assert isinstance(mae_configs.get_config('vit_s2').mae, ml_collections.ConfigDict)
  with pytest.raises(ValueError, match='unknown MAE recipe'):
    mae_configs.get_config('pit_x')
