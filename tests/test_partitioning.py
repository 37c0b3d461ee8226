"""parallel: initialize_distributed (flags, env vars, multi-host TPU) and parameter sharding."""

import jax
import numpy as np
import pytest

from vit_jax import train
from vit_jax.configs import pit as pit_configs
from vit_jax.models import layer_stack
from vit_jax.runtime import partitioning
from vit_jax.training import optim
from vit_jax.training import steps

P = jax.sharding.PartitionSpec


@pytest.mark.parametrize(
    'environ,expected',
    [
        ({}, False),
        ({'TPU_WORKER_HOSTNAMES': 'localhost'}, False),  # one host: nothing to coordinate
        ({'TPU_WORKER_HOSTNAMES': 't1v-n-0,t1v-n-1'}, True),
        ({'TPU_PROCESS_ADDRESSES': '10.0.0.2:8476,10.0.0.3:8476'}, True),
        ({'MEGASCALE_COORDINATOR_ADDRESS': '10.0.0.2:8080'}, True),
    ],
)
def test_multi_host_tpu_environment(environ, expected):
  assert partitioning.multi_host_tpu_environment(environ) is expected


def _record_initialize(monkeypatch):
  calls = []
  monkeypatch.setattr(jax.distributed, 'initialize', lambda *a, **k: calls.append((a, k)))
  monkeypatch.setattr(jax.distributed, 'is_initialized', lambda: False)
  for key in (
      'JAX_COORDINATOR_ADDRESS',
      'TPU_WORKER_HOSTNAMES',
      'TPU_PROCESS_ADDRESSES',
      'MEGASCALE_COORDINATOR_ADDRESS',
  ):
    monkeypatch.delenv(key, raising=False)
  return calls


def test_tpu_slice_initializes_without_arguments(monkeypatch):
  calls = _record_initialize(monkeypatch)
  monkeypatch.setenv('TPU_WORKER_HOSTNAMES', 'h0,h1,h2,h3')
  partitioning.initialize_distributed()
  assert calls == [((), {})]


def test_explicit_flags_win_over_the_tpu_environment(monkeypatch):
  calls = _record_initialize(monkeypatch)
  monkeypatch.setenv('TPU_WORKER_HOSTNAMES', 'h0,h1')
  monkeypatch.setenv('JAX_PLATFORMS', 'tpu')  # no gloo switch for this fake run
  partitioning.initialize_distributed('10.1.1.1:1234', 2, 1, timeout=60)
  # JAX's own timeout lies past the watchdog's (vit_jax/runtime/processes.py).
  assert calls == [(('10.1.1.1:1234', 2, 1), {'initialization_timeout': 90})]


def test_single_host_without_flags_does_not_initialize(monkeypatch):
  calls = _record_initialize(monkeypatch)
  partitioning.initialize_distributed()
  assert not calls


def test_stacked_blocks_never_shard_the_layer_axis():
  # A plain parameter shards its largest divisible dimension, ties to the first.
  assert partitioning._spec_for(
      'Transformer/encoderblock_0/MlpBlock_0/Dense_0/kernel', (8, 8), 4
  ) == P('fsdp', None)
  stacked = 'params/Transformer/encoderblock/MlpBlock_0/Dense_0/kernel'
  assert partitioning._spec_for(stacked, (8, 8, 8), 4) == P(None, 'fsdp', None)
  assert partitioning._spec_for(stacked, (12, 8, 2), 4) == P(None, 'fsdp', None)
  assert partitioning._spec_for(stacked, (8, 3, 5), 4) == P()  # only the layer axis divides
  assert (
      partitioning._spec_for('params/Transformer/encoderblock/LayerNorm_0/scale', (8, 8), 4) == P()
  )


def _train_one_step(config, params, mesh):
  """(params, params after one train step, loss) of `config`'s model on `mesh`."""
  model = train.make_model(config, 10)
  tx, schedule = optim.make_optimizer(config)
  image_shape = (4, 4, 1)
  with jax.set_mesh(mesh):
    _, shardings = steps.abstract_train_state(config, model, tx, mesh, image_shape)
    if params is None:  # the model's init moved off it (its zero head stops all gradients)
      params = steps.create_train_state(config, model, tx, shardings, image_shape)['params']
      leaves, tree = jax.tree.flatten(jax.tree.map(np.asarray, params))
      rng = np.random.default_rng(1)
      params = jax.tree.unflatten(
          tree, [x + rng.normal(0, 0.3, x.shape).astype(x.dtype) for x in leaves]
      )
    state = jax.device_put(
        {'step': np.zeros([], np.int32), 'params': params, 'opt_state': tx.init(params)}, shardings
    )
    step = jax.jit(
        steps.make_train_step(model, tx, schedule, config, 10),
        in_shardings=(shardings, partitioning.batch_sharding(mesh)),
        out_shardings=(shardings, jax.sharding.NamedSharding(mesh, P())),
    )
    rng = np.random.default_rng(0)
    batch = partitioning.global_batch(
        {
            'image': rng.normal(size=(8,) + image_shape).astype(np.float32),
            'label': np.eye(10, dtype=np.float32)[rng.integers(0, 10, 8)],
        },
        mesh,
    )
    new_state, metrics = step(state, batch)
  return params, new_state['params'], float(metrics['loss'])


@pytest.mark.slow
def test_scanned_model_trains_a_step_on_a_data_fsdp_mesh_like_the_unscanned():
  config = pit_configs.get_config('fashion_mnist')
  config.unlock()
  config.update_from_flattened_dict(
      {  # 8 layers as wide as the layer axis: a tie to break
          'pp.crop': 4,
          'batch': 8,
          'accum_steps': 1,
          'model.hidden_size': 8,
          'model.transformer.mlp_dim': 8,
          'model.transformer.num_heads': 2,
          'model.transformer.num_layers': 8,
          'mesh.data': 2,
          'mesh.fsdp': 4,
          'warmup_steps': 0,
          # SGD with weight decay: updates stay proportional to the gradients (Adam's first
          # step would blow float noise in near-zero gradients up to +-lr).
          'optim': 'sgd',
          'base_lr': 0.1,
          'weight_decay': 0.05,
      }
  )
  mesh = partitioning.create_mesh(config.mesh)
  start, plain, plain_loss = _train_one_step(config, None, mesh)
  config.model.transformer.scan_layers = True
  _, scanned, scanned_loss = _train_one_step(config, layer_stack.stack(start), mesh)
  np.testing.assert_allclose(scanned_loss, plain_loss, rtol=1e-6)
  moved = jax.tree_util.tree_flatten_with_path(
      jax.tree.map(lambda a, b: float(np.abs(np.asarray(a) - np.asarray(b)).max()), plain, start)
  )[0]
  # The step moved every parameter (but the key bias, which cancels in the softmax).
  assert all(m > 1e-4 for path, m in moved if 'key' not in jax.tree_util.keystr(path))
  query = scanned['Transformer']['encoderblock']['MultiHeadDotProductAttention_0']['query']
  assert query['kernel'].shape == (8, 8, 2, 4)
  assert query['kernel'].sharding.spec == P(None, 'fsdp', None, None)
  stacked_specs = [x.sharding.spec for x in jax.tree.leaves(scanned['Transformer']['encoderblock'])]
  assert all(not spec or spec[0] is None for spec in stacked_specs)
  want = jax.tree.map(np.asarray, layer_stack.stack(plain))
  got = jax.tree.map(np.asarray, scanned)
  assert jax.tree.structure(want) == jax.tree.structure(got)
  for w, g in zip(jax.tree.leaves(want), jax.tree.leaves(got)):
    np.testing.assert_allclose(g, w, atol=1e-6, rtol=1e-5)
