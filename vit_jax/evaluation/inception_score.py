"""The Inception Score: exp(E_x KL(p(y|x) || p(y))), averaged over splits of the samples.

As improved-gan and ADM's evaluator (the figures of the ADM and DiT papers) compute it: the
softmax of the 1008 Inception logits without the fc bias (pool_3 times the softmax matrix,
`logits_unbiased`), p(y) the mean softmax of each split, 10 splits of n // 10 consecutive
samples (ADM's 5,000 of 50,000), the mean and the standard deviation over the splits. In
float64 with log-softmax, so no probability underflows to log(0).
"""

import numpy as np
import scipy.special

from vit_jax import errors


def inception_score(logits, splits=10):
  """(mean, std) of the Inception Score of logits [n, classes] over `splits` splits."""
  logits = np.asarray(logits, np.float64)
  if logits.ndim != 2 or len(logits) < splits or splits < 1:
    raise errors.UserInputError(
        f'logits of shape {logits.shape}: the Inception Score needs [n, classes] with at '
        f'least as many samples as splits ({splits})'
    )
  scores = []
  n = len(logits)
  for i in range(splits):
    log_p = scipy.special.log_softmax(logits[i * n // splits : (i + 1) * n // splits], axis=1)
    log_marginal = scipy.special.logsumexp(log_p, axis=0) - np.log(len(log_p))
    kl = np.sum(np.exp(log_p) * (log_p - log_marginal), axis=1)
    scores.append(np.exp(np.mean(kl)))
  return float(np.mean(scores)), float(np.std(scores))
