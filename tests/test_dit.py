"""DiT model: parameter counts, names, initialisation, behaviour, and fidelity to the original.

Fidelity fixtures (tests/fixtures/dit/, written by make_fixtures.py with facebookresearch/DiT)
hold a tiny DiT's perturbed state dict and the original's outputs; no torch at test time.
"""

import json
import os

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vit_jax import errors
from vit_jax.checkpoints import dit_format
from vit_jax.configs import models as model_configs
from vit_jax.models import dit
from vit_jax.models import dit_layers

FIXTURES = os.path.join(os.path.dirname(__file__), 'fixtures', 'dit')
TINY = dict(hidden_size=64, depth=2, num_heads=4)


def _formula_count(width, depth, patch, channels=4, num_classes=1000, learn_sigma=True):
  """The original's parameter count (pos_embed is a frozen buffer, not counted)."""
  out = 2 * channels if learn_sigma else channels
  block = 18 * width * width + 15 * width  # qkv, proj, fc1, fc2, adaLN (6 * width)
  return (
      patch * patch * channels * width
      + width  # x_embedder
      + 256 * width
      + width
      + width * width
      + width  # t_embedder
      + (num_classes + 1) * width  # y_embedder with the null class
      + depth * block
      + 2 * width * width
      + 2 * width  # final adaLN
      + width * patch * patch * out
      + patch * patch * out
  )  # final linear


@pytest.mark.parametrize(
    'name,count', [('DiT-XL/2', 674_834_720), ('DiT-B/2', 130_315_808), ('DiT-S/2', 32_865_056)]
)
def test_parameter_count_matches_original(name, count):
  model = dit.DiT(num_classes=1000, **model_configs.MODEL_CONFIGS[name])
  assert dit.parameter_count(model, (1, 32, 32, 4)) == count


@pytest.mark.parametrize('name', model_configs.DIT_NAMES)
def test_every_dit_config_counts_as_the_formula(name):
  config = model_configs.MODEL_CONFIGS[name]
  model = dit.from_config(config, 1000)
  want = _formula_count(config.hidden_size, config.depth, config.patch_size)
  assert dit.parameter_count(model, (1, 32, 32, 4)) == want


def test_registry_holds_sixteen_dits():
  assert len(model_configs.DIT_NAMES) == 16
  config = model_configs.MODEL_CONFIGS['DiT-L/4']
  assert (config.hidden_size, config.depth, config.num_heads, config.patch_size) == (
      1024,
      24,
      16,
      4,
  )


def _tiny(patch=2, **kwargs):
  return dit.DiT(num_classes=10, patch_size=patch, **dict(TINY, **kwargs))


def _inputs(batch=4, size=8, channels=4, seed=0):
  rng = np.random.default_rng(seed)
  x = rng.standard_normal((batch, size, size, channels)).astype(np.float32)
  t = rng.integers(0, 1000, batch)
  y = rng.integers(0, 10, batch)
  return jnp.asarray(x), jnp.asarray(t), jnp.asarray(y)


def _original_names(depth):
  """The parameter names of the original's state dict (without the pos_embed buffer)."""
  names = [
      'x_embedder.proj',
      't_embedder.mlp.0',
      't_embedder.mlp.2',
      'final_layer.linear',
      'final_layer.adaLN_modulation.1',
  ]
  for i in range(depth):
    names += [
        f'blocks.{i}.{n}'
        for n in ('attn.qkv', 'attn.proj', 'mlp.fc1', 'mlp.fc2', 'adaLN_modulation.1')
    ]
  return {f'{n}.{leaf}' for n in names for leaf in ('weight', 'bias')} | {
      'y_embedder.embedding_table.weight'
  }


def test_parameter_names_are_the_state_dict_names():
  x, t, y = _inputs()
  params = jax.eval_shape(lambda: _tiny().init(jax.random.key(0), x, t, y, train=False))
  paths = {'/'.join(k) for k in flax.traverse_util.flatten_dict(params['params'])}
  assert {
      'x_embedder/proj/kernel',
      't_embedder/mlp_2/bias',
      'blocks_1/attn/qkv/kernel',
      'y_embedder/embedding_table/embedding',
      'final_layer/adaLN_modulation_1/kernel',
  } <= paths
  flat = flax.traverse_util.flatten_dict(params['params'])
  assert {dit_format.torch_key(k) for k in flat} == _original_names(2)
  assert all(dit_format.flax_path(dit_format.torch_key(k)) == k for k in flat)


@pytest.mark.slow
def test_initialisation_follows_the_original():
  x, t, y = _inputs()
  model = dit.DiT(num_classes=10, patch_size=2, hidden_size=256, depth=1, num_heads=4)
  params = model.init(jax.random.key(0), x, t, y, train=False)['params']
  block = params['blocks_0']
  assert not np.any(block['adaLN_modulation_1']['kernel'])
  assert not np.any(params['final_layer']['linear']['kernel'])
  assert not np.any(block['attn']['qkv']['bias'])
  # xavier-uniform: bound sqrt(6 / (fan_in + fan_out)); the patch conv over its flat view.
  qkv = np.asarray(block['attn']['qkv']['kernel'])
  assert np.abs(qkv).max() <= np.sqrt(6 / (256 + 768)) and qkv.std() > 0.8 * np.sqrt(
      2 / (256 + 768)
  )
  proj = np.asarray(params['x_embedder']['proj']['kernel'])
  assert np.abs(proj).max() <= np.sqrt(6 / (2 * 2 * 4 + 256))
  assert proj.std() > 0.8 * np.sqrt(2 / (16 + 256))
  table = np.asarray(params['y_embedder']['embedding_table']['embedding'])
  assert table.shape == (11, 256) and abs(table.std() - 0.02) < 0.003
  assert abs(np.asarray(params['t_embedder']['mlp_0']['kernel']).std() - 0.02) < 0.003
  # adaLN-Zero: the fresh model outputs zeros.
  assert not np.any(model.apply({'params': params}, x, t, y, train=False))


def _perturbed_params(model, x, t, y, seed=0):
  params = model.init(jax.random.key(seed), x, t, y, train=False)['params']
  leaves, tree = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.key(seed + 1), len(leaves))
  return jax.tree.unflatten(
      tree, [l + 0.05 * jax.random.normal(k, l.shape) for l, k in zip(leaves, keys)]
  )


@pytest.mark.slow
def test_output_shape_and_learned_sigma():
  x, t, y = _inputs()
  for learn_sigma, channels in ((True, 8), (False, 4)):
    model = _tiny(learn_sigma=learn_sigma)
    params = _perturbed_params(model, x, t, y)
    assert model.apply({'params': params}, x, t, y, train=False).shape == (4, 8, 8, channels)


@pytest.mark.slow
def test_label_dropout_uses_the_rng_and_force_drop_ids():
  x, t, y = _inputs()
  model = _tiny(class_dropout_prob=0.5)
  params = _perturbed_params(model, x, t, y)
  run = lambda y, **kw: model.apply({'params': params}, x, t, y, **kw)
  null = jnp.full_like(y, 10)
  eval_out = run(y, train=False)
  assert np.allclose(run(y, train=False, force_drop_ids=jnp.ones_like(y)), run(null, train=False))
  forced = run(y, train=False, force_drop_ids=jnp.array([1, 0, 0, 0]))
  assert np.allclose(forced[1:], eval_out[1:]) and not np.allclose(forced[0], eval_out[0])
  trained = [run(y, train=True, rngs={'dropout': jax.random.key(i)}) for i in range(8)]
  null_out = run(null, train=False)
  dropped = [np.allclose(o[i], null_out[i], atol=1e-6) for o in trained for i in range(4)]
  kept = [np.allclose(o[i], eval_out[i], atol=1e-6) for o in trained for i in range(4)]
  assert all(d != k for d, k in zip(dropped, kept)) and 4 < sum(dropped) < 28
  with pytest.raises(flax.errors.InvalidRngError):
    run(y, train=True)


def test_forward_with_cfg_equals_two_manual_passes():
  x, t, y = _inputs()
  model = _tiny()
  params = _perturbed_params(model, x, t, y)
  labels = jnp.concatenate([y[:2], jnp.full((2,), 10)])
  x2 = jnp.concatenate([x[:2], x[:2]])
  t2 = jnp.concatenate([t[:2], t[:2]])
  cond = model.apply({'params': params}, x[:2], t[:2], y[:2], train=False)
  uncond = model.apply({'params': params}, x[:2], t[:2], labels[2:], train=False)
  for guide, channels in ((3, 3), (None, 4)):
    out = model.apply(
        {'params': params},
        x2,
        t2,
        labels,
        4.0,
        guide_channels=guide,
        method=dit.DiT.forward_with_cfg,
    )
    guided = uncond[..., :channels] + 4.0 * (cond[..., :channels] - uncond[..., :channels])
    np.testing.assert_allclose(out[:2, ..., :channels], guided, atol=2e-5)
    np.testing.assert_allclose(out[2:, ..., :channels], guided, atol=2e-5)
    np.testing.assert_allclose(out[:2, ..., channels:], cond[..., channels:], atol=2e-5)
    np.testing.assert_allclose(out[2:, ..., channels:], uncond[..., channels:], atol=2e-5)


@pytest.mark.slow
def test_scan_and_remat_give_the_same_numbers():
  x, t, y = _inputs()
  model = _tiny()
  params = _perturbed_params(model, x, t, y)
  want = model.apply({'params': params}, x, t, y, train=False)
  stacked = dit_format.to_layout(params, scan_layers=True)
  for kwargs, p in (
      ({'scan_layers': True}, stacked),
      ({'remat': 'full'}, params),
      ({'scan_layers': True, 'remat': 'dots'}, stacked),
  ):
    got = _tiny(**kwargs).apply({'params': p}, x, t, y, train=False)
    np.testing.assert_allclose(got, want, atol=1e-5)
    grads = jax.grad(
        lambda p: jnp.sum(_tiny(**kwargs).apply({'params': p}, x, t, y, train=False) ** 2)
    )(p)
    assert all(np.isfinite(g).all() for g in jax.tree.leaves(grads))


def test_cpu_backward_gives_the_same_parameters_outputs_and_gradients():
  """grads_as_dots (the CPU recipe's layers) against Flax's own layers and autodiff."""
  x, t, y = _inputs()
  model, ours = _tiny(), _tiny(grads_as_dots=True)
  init = lambda m: m.init(jax.random.key(3), x, t, y, train=False)['params']
  jax.tree.map(np.testing.assert_array_equal, init(ours), init(model))
  params = _perturbed_params(model, x, t, y)
  loss = lambda m: jax.jit(
      jax.value_and_grad(
          lambda p, x: jnp.sum(m.apply({'params': p}, x, t, y, train=False) ** 2), argnums=(0, 1)
      )
  )
  (want, want_grads), (got, got_grads) = loss(model)(params, x), loss(ours)(params, x)
  np.testing.assert_allclose(got, want, rtol=1e-5)
  for g, w in zip(jax.tree.leaves(got_grads), jax.tree.leaves(want_grads), strict=True):
    np.testing.assert_allclose(g, w, rtol=2e-4, atol=2e-5 * float(np.abs(w).max()))


@pytest.mark.parametrize('impl,seq', [('blockwise', 1), ('ring', 2)])
def test_attention_schedules_agree(impl, seq):
  """Every vit_jax.attention schedule serves DiT; ring shards the 16 tokens over a mesh."""
  x, t, y = _inputs()
  model = _tiny()
  params = _perturbed_params(model, x, t, y)
  want = model.apply({'params': params}, x, t, y, train=False)
  auto = jax.sharding.AxisType.Auto
  mesh = jax.make_mesh((8 // seq, seq), ('data', 'seq'), axis_types=(auto, auto))
  with jax.set_mesh(mesh):
    got = jax.jit(
        lambda p: _tiny(attention={'impl': impl, 'block_size': 4}).apply(
            {'params': p}, x, t, y, train=False
        )
    )(params)
  np.testing.assert_allclose(got, want, atol=1e-5)


def test_bfloat16_compute():
  x, t, y = _inputs()
  model = _tiny(dtype=jnp.bfloat16)
  params = _perturbed_params(_tiny(), x, t, y)
  out = model.apply({'params': params}, x, t, y, train=False)
  assert out.dtype == jnp.bfloat16
  want = _tiny().apply({'params': params}, x, t, y, train=False)
  assert float(jnp.abs(out.astype(jnp.float32) - want).max()) < 0.1 * float(jnp.abs(want).max())


def test_clear_errors_before_compiling():
  x, t, y = _inputs()
  model = _tiny()
  init = lambda m, x, t, y: m.init(jax.random.key(0), x, t, y, train=False)
  with pytest.raises(errors.UserInputError, match=r'input size 9x9 .* patch_size=2'):
    init(model, jnp.zeros((4, 9, 9, 4)), t, y)
  with pytest.raises(errors.UserInputError, match=r'class id 11, outside 0\.\.10'):
    init(model, x, t, jnp.array([0, 1, 2, 11]))
  with pytest.raises(errors.UserInputError, match=r'class id 10, outside 0\.\.9'):
    init(_tiny(class_dropout_prob=0.0), x, t, jnp.array([0, 1, 2, 10]))
  with pytest.raises(errors.UserInputError, match='t must have shape'):
    init(model, x, t[:2], y)
  params = _perturbed_params(model, x, t, y)
  with pytest.raises(errors.UserInputError, match='cfg_scale=0.5 is below 1'):
    model.apply({'params': params}, x, t, y, 0.5, method=dit.DiT.forward_with_cfg)
  with pytest.raises(errors.UserInputError, match='odd batch of 3'):
    model.apply({'params': params}, x[:3], t[:3], y[:3], 2.0, method=dit.DiT.forward_with_cfg)
  with pytest.raises(errors.UserInputError, match='the null class'):
    dit.check_labels(np.array([3, 10]), 10, allow_null=False)


def _rel_diff(got, want):
  got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
  return np.abs(got - want).max() / np.abs(want).max()


# Heads of the fixture models (a state dict does not store them; released sizes are known).
FIXTURE_HEADS = {'p2_sigma': 4, 'p1_nosigma': 2}


def _fixture_model(name):
  params, config = dit_format.load(os.path.join(FIXTURES, f'{name}.safetensors'))
  kwargs = dict(dit_format.model_kwargs(config), num_heads=FIXTURE_HEADS[name])
  model = dit.DiT(**kwargs)
  return model, params, config


def _forward_diffs(name):
  """Max relative differences of forward and forward_with_cfg to the original's outputs."""
  model, params, config = _fixture_model(name)
  io = np.load(os.path.join(FIXTURES, f'{name}_io.npz'))
  assert config['input_size'] == io['x'].shape[1] and config['num_classes'] == 10
  out = jax.jit(lambda p, x, t, y: model.apply({'params': p}, x, t, y, train=False))(
      params, io['x'], io['t'], io['y']
  )
  assert out.shape == io['out'].shape
  cfg = model.apply(
      {'params': params},
      io['x'],
      io['t'],
      io['cfg_y'],
      io['cfg_scale'],
      method=dit.DiT.forward_with_cfg,
  )
  return _rel_diff(out, io['out']), _rel_diff(cfg, io['cfg_out'])


@pytest.mark.parametrize('name', ['p2_sigma', 'p1_nosigma'])
def test_matches_the_original_forward(name, monkeypatch):
  """Within 1e-5 of the output scale (measured about 2e-6), given the float32 timestep
  frequencies the original computed: its CPU exp rounds 2 of 128 one ulp off the nearest
  float, which at t = 999 moves the phase by ~3e-5 (see the next test)."""
  freqs = np.load(os.path.join(FIXTURES, f'{name}_io.npz'))['timestep_freqs']
  monkeypatch.setattr(dit_layers, 'timestep_frequencies', lambda dim, max_period=1e4: freqs)
  forward, guided = _forward_diffs(name)
  assert forward < 1e-5 and guided < 1e-5


@pytest.mark.parametrize('name', ['p2_sigma', 'p1_nosigma'])
def test_matches_the_original_forward_with_rounded_frequencies(name):
  """Our frequencies are exp rounded to nearest; with them, within 2e-5 of the output scale
  (measured 5e-6 to 1.0e-5, from t = 500 and 999)."""
  forward, guided = _forward_diffs(name)
  assert forward < 2e-5 and guided < 2e-5


def test_timestep_frequencies_within_one_ulp_of_the_original():
  want = np.load(os.path.join(FIXTURES, 'p2_sigma_io.npz'))['timestep_freqs']
  ours = dit_layers.timestep_frequencies(256)
  ulps = np.abs(ours.view(np.int32) - want.view(np.int32))
  assert ours.dtype == np.float32 and ulps.max() <= 1 and ulps.sum() <= 4


def test_matches_the_original_scanned():
  model, params, _ = _fixture_model('p2_sigma')
  io = np.load(os.path.join(FIXTURES, 'p2_sigma_io.npz'))
  scanned = model.clone(scan_layers=True)
  stacked = dit_format.to_layout(params, scan_layers=True)
  out = scanned.apply({'params': stacked}, io['x'], io['t'], io['y'], train=False)
  assert _rel_diff(out, io['out']) < 2e-5


def test_parameter_counts_match_the_pytorch_original():
  with open(os.path.join(FIXTURES, 'param_counts.json')) as f:
    counts = json.load(f)
  assert len(counts) >= 3
  for name, count in counts.items():
    model = dit.DiT(num_classes=1000, **model_configs.MODEL_CONFIGS[name])
    assert dit.parameter_count(model, (1, 32, 32, 4)) == count, name
