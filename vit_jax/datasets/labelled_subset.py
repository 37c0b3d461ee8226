"""`config.pp.train_labelled_fraction`: a fixed, class-balanced labelled subset of the train split.

For few-label experiments (MAE pre-training on every image, then fine-tuning on 1 % or 10 % of
the labels). The subset holds k = round(fraction * n / num_classes) examples of every class:
the first k of each class in split order. It depends on the split and the fraction only, not
on `config.seed`, so every seed and every arm of a comparison sees the same labelled images,
and a smaller fraction's subset lies inside a larger one's.

The pipeline reads the subset by index (example i of the subset is example `indices[i]` of the
split), so batch s stays a function of (seed, s) and a resumed run is bitwise the same run; an
epoch is one pass over the subset. At 1 (the default) nothing changes.
"""

import numpy as np
import tensorflow as tf

from vit_jax import errors

FIELD = 'config.pp.train_labelled_fraction'


def active(config):
  return config.pp.train_labelled_fraction < 1


def per_class(fraction, n, num_classes):
  """Examples kept of every class."""
  return int(round(fraction * n / num_classes))


def indices(labels, num_classes, fraction, where):
  """Sorted split indices of the subset; a fraction no class-balanced subset fits is an error.

  `where` names the split in errors ("split 'train' of fashion_mnist").
  """
  labels = np.asarray(labels).astype(np.int64)
  n = len(labels)
  k = per_class(fraction, n, num_classes)
  if k < 1:
    raise errors.UserInputError(
        f'{FIELD}={fraction} keeps fewer than one example per class of {where} ({n} examples, '
        f'{num_classes} classes); raise it to at least {num_classes / n:.3g}, or 1 for all.'
    )
  counts = np.bincount(labels, minlength=num_classes)
  if counts.min() < k:
    short = int(np.argmin(counts))
    raise errors.UserInputError(
        f'{FIELD}={fraction} needs {k} examples of every class of {where}, but class {short} '
        f'has only {counts[short]}; lower it to at most '
        f'{counts.min() * num_classes / n:.3g}, or 1 for the whole split.'
    )
  chosen = [np.flatnonzero(labels == c)[:k] for c in range(num_classes)]
  return np.sort(np.concatenate(chosen))


def restrict(source, chosen):
  """The `Source` (vit_jax/datasets/source.py) of the subset: index i reads `chosen[i]`."""
  table = tf.constant(np.asarray(chosen, np.int64))
  example_fn = source.example_fn
  listing = source.listing
  if listing is not None:  # an image folder's error messages look files up by subset index
    listing = listing._replace(paths=listing.paths[chosen], labels=listing.labels[chosen])
  return source._replace(
      example_fn=lambda index: example_fn(tf.gather(table, index)), n=len(chosen), listing=listing
  )
