"""The Fréchet distance between two Gaussians fitted to features (FID's formula).

d^2 = |mu1 - mu2|^2 + tr(S1 + S2 - 2 (S1 S2)^(1/2)). The matrix square root runs on the host
in float64 (scipy), as the reference implementations do: on an accelerator in float32 it
loses the digits that separate good models. The features may come from any network: the
Inception network gives the standard FID; a small classifier trained here gives a distance
that must be reported under its own name.
"""

import numpy as np
import scipy.linalg

from vit_jax import errors


def feature_statistics(features):
  """(mean [d], covariance [d, d]) of features [n, d], in float64 (unbiased covariance)."""
  features = np.asarray(features, np.float64)
  if features.ndim != 2 or features.shape[0] < 2:
    raise errors.UserInputError(
        f'features of shape {features.shape}: need [n >= 2, dim] to ' 'estimate a covariance'
    )
  return features.mean(axis=0), np.cov(features, rowvar=False)


def _check_dimensions(mu1, sigma1, mu2, sigma2):
  if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape or sigma1.shape != mu1.shape * 2:
    raise errors.UserInputError(
        f'feature statistics of different dimensions: mean {mu1.shape} / covariance '
        f'{sigma1.shape} against mean {mu2.shape} / covariance {sigma2.shape}; compute both '
        'with the same feature network'
    )


def frechet_distance(mu1, sigma1, mu2, sigma2, eps=1e-6):
  """The Fréchet distance between N(mu1, sigma1) and N(mu2, sigma2)."""
  mu1, mu2 = np.atleast_1d(np.float64(mu1)), np.atleast_1d(np.float64(mu2))
  sigma1, sigma2 = np.atleast_2d(np.float64(sigma1)), np.atleast_2d(np.float64(sigma2))
  _check_dimensions(mu1, sigma1, mu2, sigma2)
  covmean, _ = scipy.linalg.sqrtm(sigma1 @ sigma2, disp=False)
  if not np.isfinite(covmean).all():
    # A singular product (fewer samples than dimensions): shift both diagonals slightly.
    offset = np.eye(sigma1.shape[0]) * eps
    covmean = scipy.linalg.sqrtm((sigma1 + offset) @ (sigma2 + offset))
  if np.iscomplexobj(covmean):
    # Round-off leaves a tiny imaginary part; a large one means the statistics are broken.
    if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
      raise ValueError(
          f'imaginary component {np.max(np.abs(covmean.imag)):.3g} in the '
          'matrix square root: the covariances are not valid'
      )
    covmean = covmean.real
  diff = mu1 - mu2
  return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean))


def frechet_distance_of_features(features1, features2):
  """The Fréchet distance between the Gaussians fitted to two sets of features."""
  return frechet_distance(*feature_statistics(features1), *feature_statistics(features2))


def frechet_distance_to_features(mu, sigma, features):
  """The Fréchet distance between N(mu, sigma) and the Gaussian fitted to features [n, d].

  With more samples than dimensions this is `frechet_distance` (scipy's sqrtm, as the
  references). With n <= d the fitted covariance A^T A (A: the centred features over
  sqrt(n - 1)) is singular: sqrtm would need the eps fallback and takes minutes at d = 2048
  on a small host, while tr((sigma A^T A)^(1/2)) is exactly the sum of the square roots of
  the eigenvalues of the n x n matrix A sigma A^T (same nonzero spectrum).
  """
  mu, sigma = np.atleast_1d(np.float64(mu)), np.atleast_2d(np.float64(sigma))
  mu2, sigma2 = feature_statistics(features)
  _check_dimensions(mu, sigma, mu2, sigma2)
  n, d = np.shape(features)
  if n > d:
    return frechet_distance(mu, sigma, mu2, sigma2)
  a = (np.asarray(features, np.float64) - mu2) / np.sqrt(n - 1)
  eigenvalues = np.linalg.eigvalsh(a @ sigma @ a.T)
  trace_sqrt = np.sum(np.sqrt(np.clip(eigenvalues, 0, None)))
  diff = mu - mu2
  return float(diff @ diff + np.trace(sigma) + np.trace(sigma2) - 2 * trace_sqrt)
