"""Gaussian diffusion against the original's outputs (tests/fixtures/dit/diffusion.npz), the
one-program sampling loops, guidance and the errors; no torch."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vit_jax import diffusion
from vit_jax import errors
from vit_jax.checkpoints import dit_format
from vit_jax.diffusion import guidance
from vit_jax.models import dit

FIXTURES = os.path.join(os.path.dirname(__file__), 'fixtures', 'dit')
REF = dict(np.load(os.path.join(FIXTURES, 'diffusion.npz')))


def _rel_diff(got, want):
  got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
  return np.abs(got - want).max() / np.abs(want).max()


def _fixed_model(seen=None):
  """The fixtures' model: always REF['model_out'], recording the timesteps it is given."""

  def model_fn(x, t):
    if seen is not None:
      seen.append(t)
    return jnp.asarray(REF['model_out'])

  return model_fn


@pytest.mark.parametrize('spacing', ['', '250', 'ddim50', '10,10,10', '5,7', 'ddim10'])
def test_respaced_schedule_matches_the_original(spacing):
  d = diffusion.create_diffusion(spacing)
  np.testing.assert_allclose(d.betas, REF[f'betas[{spacing}]'], rtol=1e-12)
  np.testing.assert_array_equal(d.timestep_map, REF[f'timestep_map[{spacing}]'])


def test_schedule_of_other_lengths_is_scaled():
  d = diffusion.create_diffusion('10', diffusion_steps=100)
  np.testing.assert_allclose(d.betas, REF['betas[10 of 100]'], rtol=1e-12)
  np.testing.assert_array_equal(d.timestep_map, REF['timestep_map[10 of 100]'])
  assert d.num_timesteps == 10


def test_q_sample_and_p_mean_variance_match_the_original():
  d = diffusion.create_diffusion('250')
  t = jnp.asarray(REF['t_250'])
  q = d.q_sample(REF['x_start'], t, REF['noise'])
  assert _rel_diff(q, REF['q_sample[250]']) < 1e-6
  seen = []
  d.p_mean_variance(_fixed_model(seen), REF['x_t'], t)
  np.testing.assert_array_equal(seen[0], REF['model_t[250]'])  # mapped to 1000 steps
  for clip in (True, False):
    out = jax.jit(lambda x, t: d.p_mean_variance(_fixed_model(), x, t, clip_denoised=clip))(
        REF['x_t'], t
    )
    for key in ('mean', 'variance', 'log_variance', 'pred_xstart'):
      want = REF[f'p_mean_variance[250,clip={clip}].{key}']
      assert out[key].shape == want.shape
      assert _rel_diff(out[key], want) < 1e-6, (clip, key)


@pytest.mark.parametrize('spacing,rescale', [('', False), ('', True), ('250', True)])
def test_training_losses_match_the_original(spacing, rescale):
  d = diffusion.create_diffusion(spacing, rescale_learned_sigmas=rescale)
  t = REF['t_train'] if not spacing else REF['t_250']
  losses = d.training_losses(_fixed_model(), REF['x_start'], jnp.asarray(t), REF['noise'])
  for key in ('loss', 'mse', 'vb'):
    want = REF[f'training_losses[{spacing},rescale={rescale}].{key}']
    assert losses[key].shape == (4,)
    assert _rel_diff(losses[key], want) < 1e-6, key


def test_vb_term_trains_only_the_variance():
  d = diffusion.create_diffusion('')
  t = jnp.asarray(REF['t_train'])

  def vb(out):
    return d.training_losses(lambda x, t: out, REF['x_start'], t, REF['noise'])['vb'].sum()

  grads = jax.grad(vb)(jnp.asarray(REF['model_out']))
  assert not np.any(grads[..., :4]) and np.all(np.any(grads[..., 4:] != 0, axis=(1, 2, 3)))


def test_one_ddpm_and_ddim_step_match_the_original():
  d = diffusion.create_diffusion('250')
  t = jnp.asarray(REF['t_250'])
  step = d.p_sample(_fixed_model(), REF['x_t'], t, REF['noise'], clip_denoised=False)
  assert _rel_diff(step['sample'], REF['p_sample[250]']) < 1e-6
  for eta in (0.0, 0.5):
    step = d.ddim_sample(_fixed_model(), REF['x_t'], t, REF['noise'], clip_denoised=False, eta=eta)
    assert _rel_diff(step['sample'], REF[f'ddim_sample[250,eta={eta}]']) < 1e-6


def _analytic_model(x, t):
  """The fixtures' stand-in model of the original timestep t."""
  scale = (0.1 + t.astype(jnp.float32) / 2000.0).reshape(-1, 1, 1, 1)
  return jnp.concatenate([x * scale, 0.5 * jnp.tanh(x)], axis=-1)


def test_ddim_loop_matches_the_original_and_is_one_program():
  d = diffusion.create_diffusion('ddim10')
  noise = jnp.asarray(REF['ddim_loop_noise'])
  loop = jax.jit(lambda noise: d.ddim_sample_loop(_analytic_model, noise.shape, noise=noise))
  assert _rel_diff(loop(noise), REF['ddim_sample_loop[ddim10]']) < 1e-6
  hlo = loop.lower(noise).as_text()
  assert hlo.count('stablehlo.while') == 1 and hlo.count('stablehlo.tanh') == 1


def test_ddpm_loop_is_one_program_and_follows_its_key():
  d = diffusion.create_diffusion('50')
  shape = (2, 4, 4, 4)
  loop = jax.jit(lambda key: d.p_sample_loop(_analytic_model, shape, key))
  hlo = loop.lower(jax.random.key(0)).as_text()
  # The model (its one tanh) is traced once for all 50 steps; the other while loops are
  # jax.random's threefry.
  assert hlo.count('stablehlo.tanh') == 1 and 'stablehlo.while' in hlo
  a, b, c = loop(jax.random.key(0)), loop(jax.random.key(0)), loop(jax.random.key(1))
  assert a.shape == shape and np.isfinite(a).all()
  np.testing.assert_array_equal(a, b)
  assert not np.allclose(a, c)


def test_fixed_variances():
  for sigma_small in (False, True):
    d = diffusion.create_diffusion('', learn_sigma=False, sigma_small=sigma_small)
    t = jnp.array([0, 5, 999])
    out = d.p_mean_variance(lambda x, t: x, jnp.ones((3, 2, 2, 1)), t)
    want = d.posterior_variance if sigma_small else np.append(d.posterior_variance[1], d.betas[1:])
    np.testing.assert_allclose(out['variance'][:, 0, 0, 0], want[np.array([0, 5, 999])], rtol=1e-6)


@pytest.mark.parametrize(
    'spacing,match',
    [
        ('ddim999', r'no integer stride gives exactly 999 of 1000 steps'),
        ('ddimx', r'no integer stride'),
        ('abc', r"timestep_respacing='abc' is not a step count"),
        ('10,0', r'is not a step count'),
        ('600,600', r'section 0 has 500 of the 1000 steps and cannot take 600'),
        ('1001', r'section 0 has 1000 of the 1000 steps and cannot take 1001'),
    ],
)
def test_respacing_errors(spacing, match):
  with pytest.raises(errors.UserInputError, match=match):
    diffusion.create_diffusion(spacing)


def test_diffusion_errors():
  with pytest.raises(errors.UserInputError, match="noise_schedule='cosine' is not one of"):
    diffusion.create_diffusion('', noise_schedule='cosine')
  d = diffusion.create_diffusion('10')
  with pytest.raises(errors.UserInputError, match='learn_sigma=True and expects 8 channels'):
    d.p_mean_variance(lambda x, t: x, jnp.ones((2, 4, 4, 4)), jnp.array([1, 2]))
  with pytest.raises(errors.UserInputError, match='needs a PRNG key'):
    d.p_sample_loop(_analytic_model, (2, 4, 4, 4))


def _fixture_dit():
  params, _ = dit_format.load(os.path.join(FIXTURES, 'p2_sigma.safetensors'))
  model = dit.DiT(num_classes=10, patch_size=2, hidden_size=32, depth=2, num_heads=4)
  return model, params


@pytest.mark.slow
def test_guided_sampler_runs_forward_with_cfg():
  model, params = _fixture_dit()
  d = diffusion.create_diffusion('4')
  sample = guidance.make_sampler(model, d, (8, 8, 4), sampler='ddim', cfg_scale=4.0)
  labels = np.array([1, 7])
  got = sample(params, labels, jax.random.key(0))
  assert got.shape == (2, 8, 8, 4) and np.isfinite(got).all()
  # The same loop by hand: doubled noise, null labels, forward_with_cfg, first half kept.
  noise = jax.random.normal(jax.random.split(jax.random.key(0))[1], (2, 8, 8, 4))
  y = jnp.array([1, 7, 10, 10])
  model_fn = lambda x, t: model.apply(
      {'params': params}, x, t, y, 4.0, method=dit.DiT.forward_with_cfg
  )
  noise2 = jnp.concatenate([noise, noise])
  want = d.ddim_sample_loop(model_fn, noise2.shape, noise=noise2, clip_denoised=False)[:2]
  assert _rel_diff(got, want) < 1e-5
  unguided = guidance.make_sampler(model, d, (8, 8, 4), sampler='ddim')(
      params, labels, jax.random.key(0)
  )
  assert not np.allclose(got, unguided)


def test_sampler_errors_before_compiling():
  model, params = _fixture_dit()
  d = diffusion.create_diffusion('4')
  make = lambda **kw: guidance.make_sampler(model, d, (8, 8, 4), **kw)
  with pytest.raises(errors.UserInputError, match=r"sampler='euler' is not one of"):
    make(sampler='euler')
  with pytest.raises(errors.UserInputError, match=r'cfg_scale=0.5 is below 1'):
    make(cfg_scale=0.5)
  with pytest.raises(errors.UserInputError, match=r'has learn_sigma=True but the diffusion'):
    guidance.make_sampler(model, diffusion.create_diffusion('4', learn_sigma=False), (8, 8, 4))
  with pytest.raises(errors.UserInputError, match=r'class_dropout_prob=0 \(no null class\)'):
    guidance.make_sampler(model.clone(class_dropout_prob=0.0), d, (8, 8, 4), cfg_scale=2.0)
  sample = make(cfg_scale=1.5)
  with pytest.raises(errors.UserInputError, match=r'labels asks for class 10, the null class'):
    sample(params, [3, 10], jax.random.key(0))
  with pytest.raises(errors.UserInputError, match=r'class id -1, outside 0\.\.9'):
    sample(params, [3, -1], jax.random.key(0))
  with pytest.raises(
      errors.UserInputError, match=r'input size 7x7 is not divisible by ' r'patch_size=2'
  ):
    guidance.make_sampler(model, d, (7, 7, 4))(params, [1], jax.random.key(0))
