"""Parameter-tree comparisons shared by the checkpoint tests."""

import flax
import numpy as np


def flat(tree):
  """{'a/b/c': numpy array} of a nested parameter dict."""
  return {'/'.join(k): np.asarray(v) for k, v in flax.traverse_util.flatten_dict(tree).items()}


def assert_same_params(a, b):
  """The same keys and bitwise the same values."""
  fa, fb = flat(a), flat(b)
  assert sorted(fa) == sorted(fb)
  for key in fa:
    np.testing.assert_array_equal(fa[key], fb[key], err_msg=key)
