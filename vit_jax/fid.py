"""The standard generation metrics, in one place: the FID Inception network, the Fréchet
Inception Distance and the Inception Score.

  inception = vit_jax.fid.load_inception('inception.safetensors')   # or the released .pth
  out = inception(images)            # [n, h, w, 3] in [0, 1] (or uint8) -> dict of numpy
  fid = vit_jax.fid.fid_from_features(out['pool'], reference_pool)
  is_mean, is_std = vit_jax.fid.inception_score(out['logits_unbiased'])

`python -m vit_jax.evaluate` is the command line (docs/evaluation.md).
"""

from vit_jax.evaluation.frechet import feature_statistics
from vit_jax.evaluation.frechet import frechet_distance
from vit_jax.evaluation.frechet import frechet_distance_of_features as fid_from_features
from vit_jax.evaluation.inception import load_inception
from vit_jax.evaluation.inception import WEIGHTS_URL
from vit_jax.evaluation.inception_score import inception_score

__all__ = [
    'WEIGHTS_URL',
    'feature_statistics',
    'fid_from_features',
    'frechet_distance',
    'inception_score',
    'load_inception',
]
