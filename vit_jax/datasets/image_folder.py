"""Image-folder datasets `root/<split>/<class>/*.jpg|png`: listing, checks and decoding.

The listing goes through vit_jax/paths.py (local or gs://). The checks run at setup, before
anything compiles: the train and test splits must have the same class folders (labels are
the sorted folder names, so a folder missing in one split would shift every label after
it), and no class folder may be empty.

Decoding. The fast path decodes inside the tf.data graph, where a corrupt file is an
InvalidArgumentError that names no file; `undecodable(...)` finds it afterwards by decoding
the examples of the failing batch one by one. With `config.pp.skip_undecodable` the decode
runs in `tf.py_function`, which can catch the error and return a zero image instead.
"""

import collections
import re

from absl import logging
import numpy as np
import tensorflow as tf

from vit_jax import errors
from vit_jax import paths
from vit_jax.datasets import preprocessing

IMAGE_SUFFIXES = ('.jpg', '.jpeg', '.png')
_LAYOUT = 'lay it out as <dataset>/{train,test}/<class>/*.jpg|png'
DECODE_ERRORS = (tf.errors.InvalidArgumentError, tf.errors.NotFoundError)

Listing = collections.namedtuple('Listing', 'paths labels classes')


def _split_dir(root, split):
  split_dir = paths.join(root, split)
  if not paths.isdir(split_dir):
    raise errors.MissingInputError(
        f'config.dataset={root!r} is a folder but has no {split!r} subfolder ({split_dir} is '
        f'missing); {_LAYOUT}'
    )
  return split_dir


def _class_names(split_dir):
  return [d for d in paths.listdir(split_dir) if paths.isdir(paths.join(split_dir, d))]


def listing(root, split):
  """Listing(paths, labels, classes) of `root/split/<class>/*`, classes and files sorted."""
  split_dir = _split_dir(root, split)
  classes = _class_names(split_dir)
  if not classes:
    raise errors.UserInputError(
        f'config.dataset={root!r}: {split_dir} has no class folders; ' f'{_LAYOUT}'
    )
  files, labels = [], []
  for label, name in enumerate(classes):
    class_dir = paths.join(split_dir, name)
    images = [f for f in paths.listdir(class_dir) if f.lower().endswith(IMAGE_SUFFIXES)]
    if not images:
      raise errors.UserInputError(
          f'config.dataset={root!r}: class folder {class_dir} has no {"/".join(IMAGE_SUFFIXES)} '
          'images; add images to it, or remove it from every split.'
      )
    files += [paths.join(class_dir, f) for f in images]
    labels += [label] * len(images)
  return Listing(np.array(files), np.array(labels, np.int64), classes)


def check_splits(root, train_split, test_split):
  """The train and test splits have the same class folders (so the same labels)."""
  train_dir, test_dir = _split_dir(root, train_split), _split_dir(root, test_split)
  train, test = set(_class_names(train_dir)), set(_class_names(test_dir))
  if train != test:
    raise errors.UserInputError(
        f'config.dataset={root!r}: the class folders of {train_dir} and {test_dir} differ '
        f'(only in {train_split}: {sorted(train - test)}; only in {test_split}: '
        f'{sorted(test - train)}). Labels are the sorted class folder names, so give both '
        'splits the same class folders.'
    )


def _decode(data):
  return preprocessing.decode(data, 3)


def example_fn(listing_, skip_undecodable, crop):
  """index -> (uint8 image, label, ok); ok is None unless undecodable images are skipped."""
  paths_t, labels_t = tf.constant(listing_.paths), tf.constant(listing_.labels)
  if not skip_undecodable:
    return lambda index: (_decode(tf.io.read_file(paths_t[index])), labels_t[index], None)

  def decode_or_zeros(path):
    try:
      return _decode(tf.io.read_file(path)), True
    except DECODE_ERRORS:
      return tf.zeros([crop, crop, 3], tf.uint8), False

  def from_file(index):
    image, ok = tf.py_function(decode_or_zeros, [paths_t[index]], [tf.uint8, tf.bool])
    image.set_shape([None, None, 3])
    ok.set_shape([])
    return image, labels_t[index], ok

  return from_file


def _reason(error):
  """TensorFlow's message without its op and function-node decorations."""
  message = re.sub(r'\{\{.*?\}\}', '', error.message)
  return re.sub(r'\s*\[Op:.*$', '', message, flags=re.S).strip()


def undecodable(listing_, indices):
  """[(index, path, reason)] of the examples among `indices` whose file cannot be decoded."""
  bad = []
  for index in dict.fromkeys(int(i) for i in indices):
    path = listing_.paths[index]
    try:
      _decode(tf.io.read_file(path))
    except DECODE_ERRORS as e:
      bad.append((index, str(path), _reason(e)))
  return bad


def log_skipped(listing_, indices, where):
  for index in indices:
    logging.warning(
        'Skipped undecodable image %s (example %d) in %s: weight 0, zero image '
        '(config.pp.skip_undecodable=True).',
        listing_.paths[index],
        index,
        where,
    )
