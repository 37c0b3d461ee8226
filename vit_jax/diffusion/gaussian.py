"""DiT's Gaussian diffusion (ADM trimmed), NHWC and jit-compatible.

`GaussianDiffusion` holds the schedule constants, computed in float64 numpy as the original
and read as float32 (its `_extract_into_tensor`). A respaced process (timestep_respacing
'250', 'ddim50', ...) keeps its `timestep_map` and calls the model with the original
timesteps, as the original's SpacedDiffusion wraps the model. The model is a function
`model_fn(x, t, **model_kwargs)` of NHWC x and int timesteps [batch]; every method traces
under jax.jit, and the sampling loops are one lax.fori_loop each (one compiled program).
"""

import enum
import math

import jax
import jax.numpy as jnp
import numpy as np

from vit_jax import errors
from vit_jax.diffusion import likelihood


class MeanType(enum.Enum):
  EPSILON = 'epsilon'  # the model predicts the noise (DiT)
  START_X = 'start_x'  # the model predicts x_0


class VarType(enum.Enum):
  LEARNED_RANGE = 'learned_range'  # model's v in [-1, 1] interpolates log beta~_t .. log beta_t
  FIXED_SMALL = 'fixed_small'  # the posterior variance beta~_t
  FIXED_LARGE = 'fixed_large'  # beta_t (beta~_1 at t = 0)


class LossType(enum.Enum):
  MSE = 'mse'  # MSE, plus the VB term for learned variance (DiT's training)
  RESCALED_MSE = 'rescaled_mse'  # the VB term times num_timesteps / 1000
  RESCALED_KL = 'rescaled_kl'  # the variational bound times num_timesteps


def mean_flat(x):
  """Mean over all but the batch axis."""
  return jnp.mean(x, axis=tuple(range(1, x.ndim)))


def _extract(array, t, ndim):
  """array[t] as float32, shaped [batch, 1, ..., 1] to broadcast over ndim-dimensional x."""
  values = jnp.asarray(np.asarray(array, np.float32))[t]
  return values.reshape(values.shape + (1,) * (ndim - 1))


class GaussianDiffusion:
  """Forward process, posterior, model distribution, training losses and samplers."""

  def __init__(
      self,
      betas,
      mean_type=MeanType.EPSILON,
      var_type=VarType.LEARNED_RANGE,
      loss_type=LossType.MSE,
      timestep_map=None,
  ):
    betas = np.asarray(betas, np.float64)
    if betas.ndim != 1 or not ((betas > 0).all() and (betas <= 1).all()):
      raise errors.UserInputError('betas must be a 1-D schedule of values in (0, 1]')
    self.mean_type, self.var_type, self.loss_type = mean_type, var_type, loss_type
    self.betas = betas
    self.num_timesteps = len(betas)
    self.timestep_map = (
        np.arange(len(betas)) if timestep_map is None else np.asarray(timestep_map, np.int64)
    )
    alphas = 1.0 - betas
    self.alphas_cumprod = np.cumprod(alphas)
    self.alphas_cumprod_prev = np.append(1.0, self.alphas_cumprod[:-1])
    self.sqrt_alphas_cumprod = np.sqrt(self.alphas_cumprod)
    self.sqrt_one_minus_alphas_cumprod = np.sqrt(1.0 - self.alphas_cumprod)
    self.sqrt_recip_alphas_cumprod = np.sqrt(1.0 / self.alphas_cumprod)
    self.sqrt_recipm1_alphas_cumprod = np.sqrt(1.0 / self.alphas_cumprod - 1)
    # Posterior q(x_{t-1} | x_t, x_0); its variance is 0 at t = 0, so the log is clipped
    # to the t = 1 value there.
    self.posterior_variance = betas * (1.0 - self.alphas_cumprod_prev) / (1.0 - self.alphas_cumprod)
    self.posterior_log_variance_clipped = (
        np.log(np.append(self.posterior_variance[1], self.posterior_variance[1:]))
        if len(betas) > 1
        else np.array([])
    )
    self.posterior_mean_coef1 = (
        betas * np.sqrt(self.alphas_cumprod_prev) / (1.0 - self.alphas_cumprod)
    )
    self.posterior_mean_coef2 = (
        (1.0 - self.alphas_cumprod_prev) * np.sqrt(alphas) / (1.0 - self.alphas_cumprod)
    )

  @property
  def learn_sigma(self):
    return self.var_type == VarType.LEARNED_RANGE

  def _model(self, model_fn, x, t, model_kwargs):
    """The model at the original timesteps; float32 output, checked against learn_sigma."""
    out = model_fn(x, jnp.asarray(self.timestep_map)[t], **(model_kwargs or {}))
    want = 2 * x.shape[-1] if self.learn_sigma else x.shape[-1]
    if out.shape != x.shape[:-1] + (want,):
      fix = (
          'build the model with learn_sigma=True or the diffusion with learn_sigma=False'
          if self.learn_sigma
          else 'build the diffusion with learn_sigma=True'
      )
      raise errors.UserInputError(
          f'the model returned shape {out.shape} for inputs {x.shape}; the diffusion has '
          f'learn_sigma={self.learn_sigma} and expects {want} channels: {fix}.'
      )
    return out.astype(jnp.float32)

  def q_mean_variance(self, x_start, t):
    """Mean, variance and log variance of q(x_t | x_0)."""
    n = x_start.ndim
    return (
        _extract(self.sqrt_alphas_cumprod, t, n) * x_start,
        _extract(1.0 - self.alphas_cumprod, t, n),
        _extract(np.log(1.0 - self.alphas_cumprod), t, n),
    )

  def q_sample(self, x_start, t, noise):
    """x_t ~ q(x_t | x_0) for the given standard-normal noise (t = 0 is one step)."""
    n = x_start.ndim
    return (
        _extract(self.sqrt_alphas_cumprod, t, n) * x_start
        + _extract(self.sqrt_one_minus_alphas_cumprod, t, n) * noise
    )

  def q_posterior_mean_variance(self, x_start, x_t, t):
    """Mean, variance and clipped log variance of q(x_{t-1} | x_t, x_0)."""
    n = x_t.ndim
    mean = (
        _extract(self.posterior_mean_coef1, t, n) * x_start
        + _extract(self.posterior_mean_coef2, t, n) * x_t
    )
    return (
        mean,
        _extract(self.posterior_variance, t, n),
        _extract(self.posterior_log_variance_clipped, t, n),
    )

  def predict_xstart_from_eps(self, x_t, t, eps):
    n = x_t.ndim
    return (
        _extract(self.sqrt_recip_alphas_cumprod, t, n) * x_t
        - _extract(self.sqrt_recipm1_alphas_cumprod, t, n) * eps
    )

  def predict_eps_from_xstart(self, x_t, t, pred_xstart):
    n = x_t.ndim
    return (_extract(self.sqrt_recip_alphas_cumprod, t, n) * x_t - pred_xstart) / _extract(
        self.sqrt_recipm1_alphas_cumprod, t, n
    )

  def p_mean_variance(
      self,
      model_fn,
      x,
      t,
      clip_denoised=True,
      denoised_fn=None,
      model_kwargs=None,
      model_output=None,
  ):
    """p(x_{t-1} | x_t): {'mean', 'variance', 'log_variance', 'pred_xstart'}.

    `model_output` (the model's output at x, t) skips calling `model_fn`. pred_xstart goes
    through `denoised_fn`, then is clipped to [-1, 1] with `clip_denoised`.
    """
    out = self._model(model_fn, x, t, model_kwargs) if model_output is None else model_output
    n = x.ndim
    if self.var_type == VarType.LEARNED_RANGE:
      out, var_values = jnp.split(out, 2, axis=-1)
      min_log = _extract(self.posterior_log_variance_clipped, t, n)
      max_log = _extract(np.log(self.betas), t, n)
      frac = (var_values + 1) / 2
      log_variance = frac * max_log + (1 - frac) * min_log
      variance = jnp.exp(log_variance)
    else:
      if self.var_type == VarType.FIXED_LARGE:
        table = np.append(self.posterior_variance[1], self.betas[1:])
        log_table = np.log(table)
      else:
        table, log_table = self.posterior_variance, self.posterior_log_variance_clipped
      variance = jnp.broadcast_to(_extract(table, t, n), x.shape)
      log_variance = jnp.broadcast_to(_extract(log_table, t, n), x.shape)
    pred_xstart = (
        out if self.mean_type == MeanType.START_X else self.predict_xstart_from_eps(x, t, out)
    )
    if denoised_fn is not None:
      pred_xstart = denoised_fn(pred_xstart)
    if clip_denoised:
      pred_xstart = jnp.clip(pred_xstart, -1, 1)
    mean, _, _ = self.q_posterior_mean_variance(pred_xstart, x, t)
    return {
        'mean': mean,
        'variance': variance,
        'log_variance': log_variance,
        'pred_xstart': pred_xstart,
    }

  def _vb_terms_bpd(self, model_output, x_start, x_t, t, clip_denoised=False):
    """One term of the variational bound in bits per dimension: the decoder NLL at t = 0,
    KL(q(x_{t-1} | x_t, x_0) || p(x_{t-1} | x_t)) otherwise."""
    true_mean, _, true_log_variance = self.q_posterior_mean_variance(x_start, x_t, t)
    out = self.p_mean_variance(None, x_t, t, clip_denoised=clip_denoised, model_output=model_output)
    kl = likelihood.normal_kl(true_mean, true_log_variance, out['mean'], out['log_variance'])
    kl = mean_flat(kl) / math.log(2.0)
    nll = -likelihood.discretized_gaussian_log_likelihood(
        x_start, means=out['mean'], log_scales=0.5 * out['log_variance']
    )
    nll = mean_flat(nll) / math.log(2.0)
    return jnp.where(t == 0, nll, kl), out['pred_xstart']

  def training_losses(self, model_fn, x_start, t, noise, model_kwargs=None):
    """{'loss', 'mse', 'vb'} per example [batch] for timesteps t and standard-normal noise.

    MSE losses: mse of the model's mean prediction (noise for DiT), plus for learned variance
    the VB term computed with the mean output frozen (stop_gradient: the bound trains the
    variance only), times num_timesteps / 1000 for RESCALED_MSE. RESCALED_KL: the bound
    times num_timesteps ('mse' and 'vb' then hold zeros and the bound).
    """
    x_t = self.q_sample(x_start, t, noise)
    model_output = self._model(model_fn, x_t, t, model_kwargs)
    zeros = jnp.zeros(x_start.shape[:1], jnp.float32)
    if self.loss_type == LossType.RESCALED_KL:
      vb, _ = self._vb_terms_bpd(model_output, x_start, x_t, t)
      vb = vb * self.num_timesteps
      return {'loss': vb, 'mse': zeros, 'vb': vb}
    vb = zeros
    if self.learn_sigma:
      mean_out, var_values = jnp.split(model_output, 2, axis=-1)
      frozen = jnp.concatenate([jax.lax.stop_gradient(mean_out), var_values], axis=-1)
      vb, _ = self._vb_terms_bpd(frozen, x_start, x_t, t)
      if self.loss_type == LossType.RESCALED_MSE:
        vb = vb * (self.num_timesteps / 1000.0)
      model_output = mean_out
    target = noise if self.mean_type == MeanType.EPSILON else x_start
    mse = mean_flat((target - model_output) ** 2)
    return {'loss': mse + vb, 'mse': mse, 'vb': vb}

  def p_sample(
      self, model_fn, x, t, noise, clip_denoised=True, denoised_fn=None, model_kwargs=None
  ):
    """One ancestral step x_t -> x_{t-1} with the given standard-normal noise (none at t=0).
    Returns {'sample', 'pred_xstart'}."""
    out = self.p_mean_variance(model_fn, x, t, clip_denoised, denoised_fn, model_kwargs)
    nonzero = (t != 0).astype(jnp.float32).reshape((-1,) + (1,) * (x.ndim - 1))
    sample = out['mean'] + nonzero * jnp.exp(0.5 * out['log_variance']) * noise
    return {'sample': sample, 'pred_xstart': out['pred_xstart']}

  def ddim_sample(
      self,
      model_fn,
      x,
      t,
      noise=None,
      clip_denoised=True,
      denoised_fn=None,
      model_kwargs=None,
      eta=0.0,
  ):
    """One DDIM step (eq. 12 of Song et al.); `noise` is only used when eta > 0."""
    out = self.p_mean_variance(model_fn, x, t, clip_denoised, denoised_fn, model_kwargs)
    eps = self.predict_eps_from_xstart(x, t, out['pred_xstart'])
    alpha_bar = _extract(self.alphas_cumprod, t, x.ndim)
    alpha_bar_prev = _extract(self.alphas_cumprod_prev, t, x.ndim)
    sigma = (
        eta
        * jnp.sqrt((1 - alpha_bar_prev) / (1 - alpha_bar))
        * jnp.sqrt(1 - alpha_bar / alpha_bar_prev)
    )
    sample = (
        out['pred_xstart'] * jnp.sqrt(alpha_bar_prev)
        + jnp.sqrt(1 - alpha_bar_prev - sigma**2) * eps
    )
    if noise is not None:
      nonzero = (t != 0).astype(jnp.float32).reshape((-1,) + (1,) * (x.ndim - 1))
      sample = sample + nonzero * sigma * noise
    elif eta:
      raise errors.UserInputError(f'ddim_sample with eta={eta} needs noise (or use eta=0)')
    return {'sample': sample, 'pred_xstart': out['pred_xstart']}

  def _loop(self, step, shape, key, noise):
    """Runs `step(x, t, key)` from t = T-1 down to 0 in one lax.fori_loop."""
    if noise is None:
      if key is None:
        raise errors.UserInputError('sampling needs a PRNG key or the starting noise')
      key, start_key = jax.random.split(key)
      noise = jax.random.normal(start_key, shape, jnp.float32)
    elif tuple(noise.shape) != tuple(shape):
      raise errors.UserInputError(f'noise has shape {noise.shape}, not {tuple(shape)}')
    key = jax.random.key(0) if key is None else key

    def body(i, carry):
      x, key = carry
      key, step_key = jax.random.split(key)
      t = jnp.full(shape[:1], self.num_timesteps - 1 - i, jnp.int32)
      return step(x, t, step_key), key

    x, _ = jax.lax.fori_loop(0, self.num_timesteps, body, (jnp.asarray(noise, jnp.float32), key))
    return x

  def p_sample_loop(
      self,
      model_fn,
      shape,
      key=None,
      noise=None,
      clip_denoised=True,
      denoised_fn=None,
      model_kwargs=None,
  ):
    """Ancestral sampling from `noise` (or normal noise from `key`): the final x_0, NHWC."""

    def step(x, t, step_key):
      noise = jax.random.normal(step_key, x.shape, jnp.float32)
      return self.p_sample(model_fn, x, t, noise, clip_denoised, denoised_fn, model_kwargs)[
          'sample'
      ]

    if key is None:
      raise errors.UserInputError('p_sample_loop needs a PRNG key (every step adds noise)')
    return self._loop(step, shape, key, noise)

  def ddim_sample_loop(
      self,
      model_fn,
      shape,
      key=None,
      noise=None,
      clip_denoised=True,
      denoised_fn=None,
      model_kwargs=None,
      eta=0.0,
  ):
    """DDIM sampling (deterministic at eta = 0, then `key` is only needed without `noise`)."""

    def step(x, t, step_key):
      noise = jax.random.normal(step_key, x.shape, jnp.float32) if eta else None
      return self.ddim_sample(model_fn, x, t, noise, clip_denoised, denoised_fn, model_kwargs, eta)[
          'sample'
      ]

    if eta and key is None:
      raise errors.UserInputError(f'ddim_sample_loop with eta={eta} needs a PRNG key')
    return self._loop(step, shape, key, noise)
