"""The Fréchet distance against its closed forms: diagonal covariances and shifted copies."""

import numpy as np
import pytest

from vit_jax import errors
from vit_jax.evaluation import frechet


def test_diagonal_covariances_match_the_closed_form():
  rng = np.random.default_rng(0)
  mu1, mu2 = rng.normal(size=5), rng.normal(size=5)
  var1, var2 = rng.uniform(0.5, 2, size=5), rng.uniform(0.5, 2, size=5)
  # For commuting (diagonal) covariances tr((S1 S2)^1/2) = sum(sqrt(v1 v2)).
  expected = np.sum((mu1 - mu2) ** 2) + np.sum(var1 + var2 - 2 * np.sqrt(var1 * var2))
  got = frechet.frechet_distance(mu1, np.diag(var1), mu2, np.diag(var2))
  assert got == pytest.approx(expected, rel=1e-10)


def test_general_covariances_against_a_rotation_of_the_diagonal_case():
  # Rotating both Gaussians by the same orthogonal matrix leaves the distance unchanged.
  rng = np.random.default_rng(1)
  q, _ = np.linalg.qr(rng.normal(size=(4, 4)))
  mu1, mu2 = rng.normal(size=4), rng.normal(size=4)
  var1, var2 = rng.uniform(0.5, 2, size=4), rng.uniform(0.5, 2, size=4)
  plain = frechet.frechet_distance(mu1, np.diag(var1), mu2, np.diag(var2))
  rotated = frechet.frechet_distance(
      q @ mu1, q @ np.diag(var1) @ q.T, q @ mu2, q @ np.diag(var2) @ q.T
  )
  assert rotated == pytest.approx(plain, rel=1e-8)


def test_features_of_the_same_distribution_are_close_and_a_shift_adds_its_square():
  rng = np.random.default_rng(2)
  a = rng.normal(size=(4000, 3))
  assert frechet.frechet_distance_of_features(a, a) == pytest.approx(0, abs=1e-8)
  shifted = a + np.array([3.0, 0, 0])
  assert frechet.frechet_distance_of_features(a, shifted) == pytest.approx(9.0, rel=1e-6)


def test_singular_covariances_still_give_a_finite_distance():
  rng = np.random.default_rng(3)
  few = rng.normal(size=(5, 20))  # fewer samples than dimensions: rank-deficient covariance
  assert np.isfinite(frechet.frechet_distance_of_features(few, few + 0.1))


def test_statistics_of_other_dimensions_are_refused():
  with pytest.raises(errors.UserInputError, match='same feature network'):
    frechet.frechet_distance(np.zeros(3), np.eye(3), np.zeros(4), np.eye(4))
  with pytest.raises(errors.UserInputError, match=r'need \[n >= 2, dim\]'):
    frechet.feature_statistics(np.zeros((1, 3)))


@pytest.mark.parametrize('n', [5, 30])  # fewer samples than dimensions, and more
def test_distance_to_features_equals_the_square_root_route(n):
  rng = np.random.default_rng(4)
  ref = rng.normal(size=(40, 20)) @ rng.normal(size=(20, 20))
  mu, sigma = frechet.feature_statistics(ref)
  features = rng.normal(size=(n, 20)) + 0.5
  expected = frechet.frechet_distance(mu, sigma, *frechet.feature_statistics(features))
  got = frechet.frechet_distance_to_features(mu, sigma, features)
  assert got == pytest.approx(expected, rel=1e-5)
  assert frechet.frechet_distance_to_features(mu, sigma, ref) == pytest.approx(0, abs=1e-8)
