"""A classifier trained by this library as a feature network: pre-logit features for a
Fréchet distance, and its predictions for the conditional accuracy of generated samples.

A feature network is a checkpoint (`vit_jax.checkpoint.save` npz) and a JSON file beside it
with the model config, the image size and channels it was trained on, and the command that
made it. The package ships one for 14x14 Fashion-MNIST (`DEFAULT`). A distance from these
features is not Inception FID: it is reported as `fid_classifier_features`.
"""

import functools
import importlib.resources
import json

import jax
import jax.numpy as jnp
import numpy as np

from vit_jax import checkpoint
from vit_jax import errors
from vit_jax import paths
from vit_jax.models import vit

# The shipped Fashion-MNIST classifier (its JSON names the command that trained it).
DEFAULT = 'package:fashion_mnist14_classifier'


def resolve(path):
  """The file stem of a feature network: `package:<name>` is a file shipped in vit_jax/data."""
  if path.startswith('package:'):
    return str(importlib.resources.files('vit_jax').joinpath('data', path[len('package:') :]))
  for suffix in ('.npz', '.json'):
    if not paths.exists(path + suffix):
      raise errors.MissingInputError(
          f'feature network {path + suffix!r} does not exist; give the stem of a classifier '
          f'npz with its .json beside it, or {DEFAULT!r}'
      )
  return path


class FeatureNetwork:
  """features(images) -> [n, d] pre-logits; logits(images) -> [n, classes]. Images NHWC in
  [-1, 1] at `image_shape` (the pipeline's normalisation)."""

  def __init__(self, path=DEFAULT, batch=500):
    path = resolve(path)
    info = json.loads(paths.read_text(path + '.json'))
    self.image_shape = tuple(info['image_shape'])
    self.num_classes = int(info['num_classes'])
    self.batch = batch
    params = checkpoint.load(path + '.npz')
    self._head = params.pop('head')
    self._params = params
    self._model = vit.VisionTransformer(num_classes=None, **info['model_config'])

  @functools.partial(jax.jit, static_argnums=0)
  def _forward(self, params, head, images):
    features = self._model.apply({'params': params}, images, train=False)
    return features, features @ head['kernel'] + head['bias']

  def features_and_logits(self, images):
    """(features [n, d], logits [n, classes]) as numpy, in batches of `self.batch`."""
    images = np.asarray(images, np.float32)
    if images.shape[1:] != self.image_shape:
      raise errors.UserInputError(
          f'images of shape {images.shape[1:]} for a feature network trained on '
          f'{self.image_shape}; generate (or resize) images of that shape'
      )
    outs = [
        self._forward(self._params, self._head, jnp.asarray(images[i : i + self.batch]))
        for i in range(0, len(images), self.batch)
    ]
    return (
        np.concatenate([np.asarray(f) for f, _ in outs]),
        np.concatenate([np.asarray(l) for _, l in outs]),
    )


def conditional_accuracy(logits, labels):
  """The share of samples the classifier assigns to the class they were generated for."""
  return float(np.mean(np.argmax(logits, -1) == np.asarray(labels)))
