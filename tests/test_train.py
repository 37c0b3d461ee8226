"""Train loop: real offline data, JPEGs from array_record, seq-sharded PiT, fine-tuning,
errors, configs."""

import json
import os
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vit_jax import objectives
from vit_jax import train
from vit_jax.checkpoints import orbax_state
from vit_jax.configs import augreg as augreg_configs
from vit_jax.configs import common
from vit_jax.configs import pit as pit_configs
from vit_jax.configs import vit as vit_configs
from vit_jax.perf import hlo_flops
from vit_jax.perf import model_flops
from vit_jax.runtime import partitioning
from vit_jax.training import metrics
from vit_jax.training import optim
from vit_jax.training import steps

FIXTURES = pathlib.Path(__file__).parent / 'fixtures'


def tiny_config(data_dir, **overrides):
  """The Fashion-MNIST PiT preset shrunk to seconds: 8x8 pixels, width 16, one block."""
  config = pit_configs.get_config('fashion_mnist')
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
          'total_steps': 6,
          'warmup_steps': 1,
          'eval_every': 0,
          'progress_every': 2,
          'checkpoint_every': 3,
          'mesh.data': -1,
      }
  )
  config.update_from_flattened_dict(overrides)
  return config.lock()


@pytest.mark.slow
def test_trains_on_local_fashion_mnist_and_writes_metrics(fashion_mnist_data_dir, tmp_path):
  # Flax's layers: with the recipe's grads_as_dots the compiled step also holds the parameter
  # gradients' matrix-vector products, which the FLOP count below includes (2 % more here).
  config = tiny_config(
      fashion_mnist_data_dir,
      **{'profile.first_step': 2, 'profile.num_steps': 2, 'model.transformer.grads_as_dots': False},
  )
  result = train.train_and_evaluate(config, str(tmp_path))
  assert result['step'] == 6 and result['eval_examples'] == 10_000
  assert 0.0 <= result['eval_accuracy'] <= 1.0
  records = metrics.read_jsonl(str(tmp_path))
  assert [r['step'] for r in records if 'train_loss' in r] == [2, 3, 4, 6]
  logged = [r for r in records if 'train_loss' in r]
  assert all(
      {'learning_rate', 'examples_per_sec', 'img_per_sec_per_device', 'core_hours'} <= set(r)
      for r in logged
  )
  for r in logged:  # 8 simulated devices
    assert r['img_per_sec_per_device'] == pytest.approx(r['examples_per_sec'] / 8)
  hours = [r['core_hours'] for r in logged]
  assert 0 < hours[0] < hours[-1] < 8 * 600 / 3600
  # FLOPs counted from the compiled step: forward + backward = 3 forward passes of 16 images.
  forward = model_flops.vit_forward_flops(config.model, 8, 1, 10)
  per_step = {r['flops_per_step'] for r in logged}
  assert len(per_step) == 1 and per_step.pop() == pytest.approx(3 * 16 * forward, rel=0.01)
  for r in logged:  # achieved FLOP/s per device = FLOPs per step x steps/s / 8 devices
    assert r['tflops_per_sec_per_device'] > 0 and 'mfu' not in r  # CPU: no known peak
    assert r['tflops_per_sec_per_device'] * 1e12 == pytest.approx(
        r['flops_per_step'] * r['examples_per_sec'] / 16 / 8
    )
  assert any('eval_accuracy' in r for r in records)
  assert sorted(os.listdir(tmp_path / 'checkpoints')) == ['3', '6']
  saved = json.loads((tmp_path / 'config.json').read_text())
  assert saved['total_steps'] == 6 and saved['model']['hidden_size'] == 16
  assert sorted(
      step for step, tag, _ in metrics.read_scalars(str(tmp_path)) if tag == 'train_loss'
  ) == [2, 3, 4, 6]
  traces = list((tmp_path / 'plugins' / 'profile').rglob('*.xplane.pb'))
  assert len(traces) == 1 and traces[0].stat().st_size > 0
  # Asked again, the finished run trains nothing and reports its accuracy.
  again = train.train_and_evaluate(config, str(tmp_path))
  assert again['step'] == 6 and again['eval_accuracy'] == result['eval_accuracy']
  with pytest.raises(ValueError, match='is a file, not a folder'):
    train.train_and_evaluate(config, str(tmp_path / 'config.json'))
  with pytest.raises(ValueError, match='beyond config.total_steps=4'):
    train.train_and_evaluate(tiny_config(fashion_mnist_data_dir, total_steps=4), str(tmp_path))
  assert sorted(os.listdir(tmp_path / 'checkpoints')) == ['3', '6']


def _compiled_train_step(config, mesh, num_classes, image_shape, batch):
  """The run's train step for `config`, compiled for a batch of `batch` images."""
  model = train.make_model(config, num_classes)
  tx, schedule = optim.make_optimizer(config)
  with jax.set_mesh(mesh):
    state, shardings = steps.abstract_train_state(config, model, tx, mesh, image_shape)
    sharding = partitioning.batch_sharding(mesh)
    data = {
        'image': jax.ShapeDtypeStruct((batch,) + image_shape, jnp.float32, sharding=sharding),
        'label': jax.ShapeDtypeStruct((batch, num_classes), jnp.float32, sharding=sharding),
    }
    jitted = steps.jit_train_step(config, model, tx, schedule, num_classes, shardings, mesh)
    return steps.compile_train_step(jitted, state, data)


@pytest.mark.slow
def test_vit_b16_train_step_counts_three_forward_passes():
  """ViT-B/16's compiled train step (2 images at 224x224, one CPU device) against 3 x the
  analytic forward (35.1 GFLOP an image). It is 0.2 % below: the gradient of the images
  through the patch embedding is never computed. Lowering + compiling: ~15 s here."""
  config = vit_configs.get_config('b16,cifar10').copy_and_resolve_references()
  config.accum_steps = 1
  mesh = jax.sharding.Mesh(np.array(jax.devices()[:1]).reshape(1, 1, 1), partitioning.AXES)
  compiled = _compiled_train_step(config, mesh, 1000, (224, 224, 3), batch=2)
  forward = model_flops.vit_forward_flops(config.model, 224, 3, 1000)
  assert forward == pytest.approx(35.13e9, rel=1e-3)
  assert hlo_flops.count(compiled).flops == pytest.approx(3 * 2 * forward, rel=0.01)


@pytest.mark.slow
def test_accumulated_steps_count_every_micro_batch():
  """accum_steps=4 runs its micro-batches in a lax.scan: the same FLOPs as one pass over the
  batch, where XLA's cost analysis sees a single micro-batch."""
  counts = []
  for accum_steps in (1, 4):
    config = tiny_config('unused', batch=64, accum_steps=accum_steps)  # 2 a device a pass
    compiled = _compiled_train_step(
        config, partitioning.create_mesh(config.mesh), 10, (8, 8, 1), batch=64
    )
    counts.append((hlo_flops.count(compiled).flops, compiled.cost_analysis()['flops']))
  (plain, _), (accumulated, seen_by_xla) = counts
  assert accumulated == pytest.approx(plain, rel=0.01)
  assert seen_by_xla < 0.5 * plain


@pytest.mark.slow
def test_trains_on_jpegs_read_by_index_from_array_record(jpeg_data_dir, tmp_path):
  config = tiny_config(
      jpeg_data_dir,
      dataset='generated_jpegs/tiny',
      **{
          'pp.channels': 3,
          'batch_eval': 8,
          'total_steps': 2,
          'checkpoint_every': 2,
          'pp.inception_crop': True,
          'pp.randaugment.num_layers': 1,
          'pp.mixup': 0.2,
          'pp.on_device': False,
      },
  )  # the host pipeline: on-device batches only flip
  result = train.train_and_evaluate(config, str(tmp_path / 'work'))
  assert result['eval_examples'] == 20 and np.isfinite(result['train_loss'])


def _fixed_batch_step(config):
  """(jitted train step, initial state, one fixed batch of 8 random 8x8 images)."""
  model = train.make_model(config, 10)
  tx, schedule = optim.make_optimizer(config)
  images = jax.random.normal(jax.random.PRNGKey(0), (8, 8, 8, 1))
  batch = {'image': images, 'label': jax.nn.one_hot(jnp.arange(8) % 10, 10)}
  params = model.init(jax.random.PRNGKey(1), images[:1], train=False)['params']
  state = {'step': jnp.zeros([], jnp.int32), 'params': params, 'opt_state': tx.init(params)}
  return jax.jit(steps.make_train_step(model, tx, schedule, config, 10)), state, batch


@pytest.mark.slow
def test_loss_decreases_on_a_fixed_batch():
  config = pit_configs.get_config('fashion_mnist')
  config.unlock()
  config.update_from_flattened_dict(
      {
          'model.hidden_size': 16,
          'model.transformer.mlp_dim': 32,
          'model.transformer.num_layers': 1,
          'warmup_steps': 1,
          'model.posemb': 'learn',  # memorising noise needs it
          'accum_steps': 2,
          'label_smoothing': 0.1,
          'base_lr': 1e-2,
      }
  )
  step, state, batch = _fixed_batch_step(config)
  losses = []
  for _ in range(25):
    state, m = step(state, batch)
    losses.append(float(m['loss']))
  assert losses[-1] < 0.5 * losses[0], losses


@pytest.mark.slow
def test_bfloat16_params_train_with_bfloat16_optimizer_state():
  config = pit_configs.get_config('fashion_mnist')
  config.unlock()
  config.update_from_flattened_dict(
      {
          'model.hidden_size': 16,
          'model.transformer.mlp_dim': 32,
          'model.transformer.num_layers': 1,
          'warmup_steps': 1,
          'accum_steps': 2,
          'param_dtype': 'bfloat16',
      }
  )
  step, state, batch = _fixed_batch_step(config)
  params = state['params']
  floats = lambda tree: {
      x.dtype for x in jax.tree.leaves(tree) if jnp.issubdtype(x.dtype, jnp.floating)
  }
  assert floats(state['params']) == floats(state['opt_state']) == {jnp.dtype(jnp.bfloat16)}
  for _ in range(3):
    new_state, metrics = step(state, batch)
    assert np.isfinite(float(metrics['loss'])) and np.isfinite(float(metrics['grad_norm']))
    state = new_state
  assert floats(state['params']) == floats(state['opt_state']) == {jnp.dtype(jnp.bfloat16)}
  moved = jax.tree.map(lambda a, b: bool(jnp.any(a != b)), state['params'], params)
  assert moved['head']['kernel'] and moved['embedding']['kernel']


@pytest.mark.parametrize('accum_steps', [1, 2])
@pytest.mark.slow
def test_batch_weight_gives_the_weighted_mean_loss(accum_steps):
  """With batch['weight'] (skipped undecodable images) the loss is sum(w*ce) / sum(w)."""
  config = pit_configs.get_config('fashion_mnist')
  config.unlock()
  config.update_from_flattened_dict(
      {
          'model.hidden_size': 16,
          'model.transformer.mlp_dim': 32,
          'model.transformer.num_layers': 1,
          'accum_steps': accum_steps,
          'label_smoothing': 0.1,
      }
  )
  model = train.make_model(config, 10)
  tx, schedule = optim.make_optimizer(config)
  images = jax.random.normal(jax.random.PRNGKey(0), (8, 8, 8, 1))
  labels = jax.nn.one_hot(jnp.arange(8) % 10, 10)
  params = model.init(jax.random.PRNGKey(1), images[:1], train=False)['params']
  state = {'step': jnp.zeros([], jnp.int32), 'params': params, 'opt_state': tx.init(params)}
  step = jax.jit(steps.make_train_step(model, tx, schedule, config, 10))
  logits = model.apply({'params': params}, images, train=False)
  smoothed = labels * 0.9 + 0.1 / 10
  ce = np.asarray(-jnp.sum(smoothed * jax.nn.log_softmax(logits), -1))
  weight = np.array([1, 0, 1, 1, 0, 1, 1, 1], np.float32)
  _, plain = step(state, {'image': images, 'label': labels})
  _, weighted = step(state, {'image': images, 'label': labels, 'weight': weight})
  _, ones = step(state, {'image': images, 'label': labels, 'weight': np.ones(8, np.float32)})
  np.testing.assert_allclose(plain['loss'], ce.mean(), rtol=1e-5)
  np.testing.assert_allclose(weighted['loss'], (weight * ce).sum() / weight.sum(), rtol=1e-5)
  np.testing.assert_allclose(ones['loss'], plain['loss'], rtol=1e-6)
  _, none_kept = step(state, {'image': images, 'label': labels, 'weight': np.zeros(8)})
  assert float(none_kept['loss']) == 0.0


@pytest.mark.slow
def test_seq_mesh_trains_a_pit_step_with_ring_attention(fashion_mnist_data_dir, tmp_path):
  config = tiny_config(
      fashion_mnist_data_dir,
      **{'mesh.data': 2, 'mesh.seq': 4, 'total_steps': 2, 'checkpoint_every': 2},
  )
  config.unlock()
  config.model.transformer.attention = {'impl': 'ring', 'block_size': 8}
  result = train.train_and_evaluate(config.lock(), str(tmp_path))
  assert result['step'] == 2 and np.isfinite(result['train_loss'])


@pytest.mark.slow
def test_fine_tunes_fixture_checkpoint_at_new_resolution_and_classes(
    fashion_mnist_data_dir, tmp_path
):
  fixture = json.loads((FIXTURES / 'gap_config.json').read_text())
  config = tiny_config(
      fashion_mnist_data_dir,
      **{
          'pp.crop': 16,
          'pp.channels': 3,
          'total_steps': 2,
          'checkpoint_every': 2,
          'pretrained_path': str(FIXTURES / 'gap.npz'),
      },
  )
  config.unlock()
  config.model = fixture['model_config']  # 32x32 / 5 classes -> 16x16 / 10 classes
  config.lock()
  result = train.train_and_evaluate(config, str(tmp_path))
  assert result['step'] == 2 and np.isfinite(result['train_loss'])
  # The initial state holds the fixture's weights, a resized posemb and a fresh 10-way head.
  mesh = partitioning.create_mesh(config.mesh)
  model = train.make_model(config, 10)
  tx, _ = optim.make_optimizer(config)
  _, shardings = steps.abstract_train_state(config, model, tx, mesh, (16, 16, 3))
  params = steps.create_train_state(config, model, tx, shardings, (16, 16, 3))['params']
  raw = np.load(FIXTURES / 'gap_linen.npz')
  np.testing.assert_array_equal(
      params['Transformer']['encoderblock_1']['MlpBlock_0']['Dense_0']['kernel'],
      raw['Transformer/encoderblock_1/MlpBlock_0/Dense_0/kernel'],
  )
  assert params['Transformer']['posembed_input']['pos_embedding'].shape == (1, 16, 64)
  assert params['head']['kernel'].shape == (64, 10) and not np.any(params['head']['kernel'])


@pytest.mark.parametrize(
    'overrides,message',
    [
        ({'dataset': 'no_such_dataset'}, "config.dataset='no_such_dataset'"),
        ({'batch': 12}, 'config.batch=12 is not divisible'),
        ({'pp.crop': 10, 'model.patches.size': (4, 4)}, 'config.pp.crop=10 is not divisible'),
        ({'mesh.data': 3}, 'needs 3 devices but there are 8'),
        ({'pretrained_path': '/no/such/file.npz'}, 'config.pretrained_path'),
    ],
)
def test_bad_input_is_a_clear_error(fashion_mnist_data_dir, tmp_path, overrides, message):
  with pytest.raises((ValueError, FileNotFoundError), match=message):
    train.train_and_evaluate(tiny_config(fashion_mnist_data_dir, **overrides), str(tmp_path))


@pytest.mark.slow
def test_nan_loss_stops_and_keeps_last_good_checkpoint(fashion_mnist_data_dir, tmp_path):
  good = tiny_config(fashion_mnist_data_dir, total_steps=3)
  train.train_and_evaluate(good, str(tmp_path))
  bad = tiny_config(fashion_mnist_data_dir, total_steps=6, base_lr=1e38)
  with pytest.raises(FloatingPointError, match='last good checkpoint'):
    train.train_and_evaluate(bad, str(tmp_path))
  assert sorted(os.listdir(tmp_path / 'checkpoints')) == ['3']
  other_optimizer = tiny_config(fashion_mnist_data_dir, total_steps=6, optim='sgd')
  with pytest.raises(ValueError, match='different train state'):
    train.train_and_evaluate(other_optimizer, str(tmp_path))
  assert sorted(os.listdir(tmp_path / 'checkpoints')) == ['3']  # nothing moved or deleted


@pytest.mark.slow
def test_resume_with_the_other_block_layout_is_one_clear_error(fashion_mnist_data_dir, tmp_path):
  """The train state keeps the model's layout: flipping scan_layers says how to resume."""
  train.train_and_evaluate(
      tiny_config(fashion_mnist_data_dir, total_steps=1, warmup_steps=0), str(tmp_path)
  )
  scanned = tiny_config(fashion_mnist_data_dir, total_steps=2)
  scanned.unlock()
  scanned.model.transformer.scan_layers = True
  with pytest.raises(orbax_state.CheckpointMismatchError) as error:
    train.train_and_evaluate(scanned.lock(), str(tmp_path))
  message = str(error.value)
  assert str(tmp_path / 'checkpoints') in message
  assert 'written with config.model.transformer.scan_layers=False' in message
  assert '--config.model.transformer.scan_layers=False' in message, message
  assert sorted(os.listdir(tmp_path / 'checkpoints')) == ['1']  # nothing moved or deleted
  stacked = {'params/Transformer/encoderblock/LayerNorm_0/scale': ((2, 4), 'float32')}
  unstacked = {'opt_state/0/trace/Transformer/encoderblock_0/LayerNorm_0/scale': ((4,), 'float32')}
  assert 'scan_layers=True' in orbax_state.describe_layout_mismatch(stacked, unstacked)
  assert orbax_state.describe_layout_mismatch(stacked, stacked) is None


@pytest.mark.slow
def test_truncated_newest_checkpoint_falls_back_and_ends_bitwise_equal(
    fashion_mnist_data_dir, tmp_path, caplog
):
  train.train_and_evaluate(tiny_config(fashion_mnist_data_dir), str(tmp_path))
  uninterrupted = orbax_state.load_params(str(tmp_path / 'checkpoints'), 6)
  arrays = sorted(
      (tmp_path / 'checkpoints' / '6' / 'default' / 'd').iterdir(), key=lambda p: -p.stat().st_size
  )
  damaged = arrays[0]  # the array data file, truncated as a full disk or a killed copy leaves it
  damaged.write_bytes(damaged.read_bytes()[: damaged.stat().st_size // 2])
  result = train.train_and_evaluate(tiny_config(fashion_mnist_data_dir), str(tmp_path))
  assert 'is damaged' in caplog.text and 'different train state' not in caplog.text
  assert result['step'] == 6  # resumed from step 3 and trained again to 6
  assert sorted(os.listdir(tmp_path / 'checkpoints')) == ['3', '6']
  kept = os.listdir(tmp_path / 'checkpoints.unreadable')  # the bad one is kept aside
  assert len(kept) == 1 and kept[0].startswith('6-')
  again = orbax_state.load_params(str(tmp_path / 'checkpoints'), 6)
  jax.tree.map(np.testing.assert_array_equal, again, uninterrupted)


def _leaf_names(config, prefix=''):
  names = []
  for key, value in config.items():
    if hasattr(value, 'items') and key not in ('model',):
      names += _leaf_names(value, f'{prefix}{key}.')
    else:
      names.append(f'{prefix}{key}')
  return names


def test_every_config_field_is_read():
  """Each field of common.py appears as `config.<field>` / `pp.<field>` in the package."""
  source = ''
  for path in pathlib.Path(train.__file__).parent.rglob('*.py'):
    source += path.read_text()
  for name in _leaf_names(common.get_config()):
    last = name.split('.')[-1]
    parent = name.split('.')[-2] if '.' in name else 'config'
    assert f'{parent}.{last}' in source or f"'{last}'" in source, name


def test_presets_build_and_reject_unknown_names():
  for arg in (
      'b16,cifar10',
      'ti16,imagenet2012',
      'r50_b16,oxford_flowers102',
      'vit4,fashion_mnist',
      'testing,mnist',
  ):
    config = vit_configs.get_config(arg)
    assert config.model.model_name and config.total_steps > 0
  for recipe in (
      'fashion_mnist',
      'fashion_mnist_vit2',
      'cifar100_pit_t',
      'cifar100_pit_t_vit2',
      'imagenet_pit_b',
      'imagenet_pit_b_vit2',
  ):
    config = pit_configs.get_config(recipe)
    assert config.optim == 'adamw'
  assert pit_configs.get_config('imagenet_pit_s_vit2').model.patches.size == (2, 2)
  augreg = augreg_configs.get_config('/ckpts/R26_S_32-i21k-300ep.npz,oxford_iiit_pet')
  assert augreg.model.model_name == 'R26+ViT-S_32' and augreg.dataset == 'oxford_iiit_pet'
  assert augreg.pretrained_path == '/ckpts/R26_S_32-i21k-300ep.npz'
  with pytest.raises(ValueError, match='unknown'):
    vit_configs.get_config('b16,not_a_dataset')
  with pytest.raises(ValueError, match='unknown'):
    pit_configs.get_config('nope')


def test_schedule_matches_closed_form():
  config = common.get_config()
  config.update_from_flattened_dict({'base_lr': 0.1, 'warmup_steps': 10, 'total_steps': 110})
  schedule = optim.make_schedule(config)
  assert float(schedule(0)) == 0.0
  np.testing.assert_allclose(schedule(5), 0.05, rtol=1e-6)
  np.testing.assert_allclose(schedule(10), 0.1, rtol=1e-6)
  np.testing.assert_allclose(schedule(60), 0.1 * 0.5 * (1 + np.cos(np.pi * 0.5)), rtol=1e-5)
  config.decay_type = 'linear'
  np.testing.assert_allclose(
      optim.make_schedule(config)(60), 0.1 * (1e-5 + (1 - 1e-5) * 0.5), rtol=1e-5
  )
  np.testing.assert_allclose(optim.make_schedule(config)(110), 0.1 * 1e-5, rtol=1e-5)


@pytest.mark.slow
def test_eval_flip_averages_each_image_with_its_mirror():
  """config.eval_flip: correct counts of logits(x) + logits(mirror x), and of logits(x)."""
  config = pit_configs.get_config('fashion_mnist')
  config.unlock()
  config.update_from_flattened_dict(
      {
          'model.hidden_size': 16,
          'model.transformer.mlp_dim': 32,
          'model.transformer.num_layers': 1,
          'eval_flip': True,
      }
  )
  model = train.make_model(config, 10)
  images = jax.random.normal(jax.random.PRNGKey(0), (64, 8, 8, 1))
  params = model.init(jax.random.PRNGKey(1), images[:1], train=False)['params']
  head = params['head']['kernel']  # zero-initialised: give the classes different logits
  params['head']['kernel'] = jax.random.normal(jax.random.PRNGKey(2), head.shape)
  apply = lambda x: np.asarray(model.apply({'params': params}, x, train=False))
  single, mirrored = apply(images), apply(images[:, :, ::-1])
  assert not np.allclose(single.argmax(-1), mirrored.argmax(-1))  # the mirror can disagree
  # Labels that the averaged vote gets right where the single view may not, and a masked row.
  label = (single + mirrored).argmax(-1)
  mask = np.ones(64, np.float32)
  mask[-1] = 0
  batch = {'image': images, 'label': jax.nn.one_hot(label, 10), 'mask': mask}
  sums, count = jax.jit(steps.make_eval_step(model, config))(params, batch)
  assert float(count) == 63
  np.testing.assert_array_equal(sums, [63, np.sum((single.argmax(-1) == label) * mask)])
  config.eval_flip = False
  plain, _ = jax.jit(steps.make_eval_step(model, config))(params, batch)
  assert float(plain) == float(sums[1])
  assert objectives.eval_metric_names(config) == ('accuracy',)
