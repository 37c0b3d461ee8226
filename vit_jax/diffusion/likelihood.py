"""Gaussian KL and the discretised Gaussian log-likelihood of the variational bound (float32)."""

import math

import jax.numpy as jnp


def normal_kl(mean1, logvar1, mean2, logvar2):
  """KL(N(mean1, exp(logvar1)) || N(mean2, exp(logvar2))) elementwise, in nats."""
  return 0.5 * (
      -1.0
      + logvar2
      - logvar1
      + jnp.exp(logvar1 - logvar2)
      + ((mean1 - mean2) ** 2) * jnp.exp(-logvar2)
  )


def approx_standard_normal_cdf(x):
  """The tanh approximation of the standard normal CDF the original uses."""
  return 0.5 * (1.0 + jnp.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3)))


def discretized_gaussian_log_likelihood(x, *, means, log_scales):
  """Log-probability (nats) of data in [-1, 1] quantised to 256 levels (bins of width 2/255)
  under N(means, exp(log_scales)^2); the two edge bins extend to -inf and +inf."""
  if x.shape != means.shape or x.shape != log_scales.shape:
    raise ValueError(
        f'shapes differ: x {x.shape}, means {means.shape}, log_scales {log_scales.shape}'
    )
  centered = x - means
  inv_stdv = jnp.exp(-log_scales)
  cdf_plus = approx_standard_normal_cdf(inv_stdv * (centered + 1.0 / 255.0))
  cdf_min = approx_standard_normal_cdf(inv_stdv * (centered - 1.0 / 255.0))
  log_cdf_plus = jnp.log(jnp.maximum(cdf_plus, 1e-12))
  log_one_minus_cdf_min = jnp.log(jnp.maximum(1.0 - cdf_min, 1e-12))
  log_cdf_delta = jnp.log(jnp.maximum(cdf_plus - cdf_min, 1e-12))
  return jnp.where(
      x < -0.999, log_cdf_plus, jnp.where(x > 0.999, log_one_minus_cdf_min, log_cdf_delta)
  )
