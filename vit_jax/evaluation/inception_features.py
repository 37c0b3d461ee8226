"""The FID Inception run over every device: fixed-size batches laid out on the batch axis.

The network is compiled once, for [batch, 299, 299, 3]; the resize to 299 is a separate small
program per input size, so images of a new size cost no recompile of the network. The last
batch is padded with zeros and the padding dropped. With several processes every process
gives the same images (as `python -m vit_jax.sample` writes them) and gets every output.
"""

import functools

import jax
from jax.experimental import multihost_utils
import jax.numpy as jnp
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
import numpy as np

from vit_jax import errors
from vit_jax.evaluation import inception
from vit_jax.runtime import partitioning

PER_DEVICE_BATCH = 8
OUTPUTS = ('pool', 'logits', 'logits_unbiased')


class InceptionFeatures:
  """images [n, h, w, 3] (float in [0, 1], or uint8 0..255) -> {'pool': [n, 2048], 'logits':
  [n, 1008] (fc with bias), 'logits_unbiased': [n, 1008] (for the Inception Score)}, numpy.

  `batch`: images per compiled call over all devices (default 8 per device), a multiple of
  the device count.
  """

  def __init__(self, variables, batch=None, mesh=None):
    self.mesh = mesh or partitioning.create_mesh({'data': -1})
    self.batch = batch or PER_DEVICE_BATCH * self.mesh.size
    partitioning.validate_batch(self.batch, self.mesh, 'the Inception batch')
    self._sharding = partitioning.batch_sharding(self.mesh)
    self._variables = jax.device_put(variables, NamedSharding(self.mesh, P()))
    self._forward, self._preprocess = _compiled(self.mesh)

  def _put(self, part):
    return jax.make_array_from_callback(part.shape, self._sharding, lambda index: part[index])

  def __call__(self, images, progress=None):
    images = np.asarray(images)
    check_images(images)
    n = len(images)
    outs = {k: [] for k in OUTPUTS}
    for start in range(0, n, self.batch):
      part = images[start : start + self.batch]
      pad = self.batch - len(part)
      if pad:
        part = np.concatenate([part, np.zeros((pad, *part.shape[1:]), part.dtype)])
      result = self._forward(self._variables, self._preprocess(self._put(part)))
      for k in OUTPUTS:
        gathered = multihost_utils.process_allgather(result[k], tiled=True)
        outs[k].append(np.asarray(gathered)[: self.batch - pad])
      if progress:
        progress(min(start + self.batch, n), n)
    return {k: np.concatenate(v) for k, v in outs.items()}


@functools.cache
def _compiled(mesh):
  """The jitted network and resize for a mesh, shared by every InceptionFeatures on it (a
  second network with other weights compiles nothing new)."""
  sharding = partitioning.batch_sharding(mesh)
  forward = jax.jit(inception.FIDInceptionV3().apply, out_shardings=sharding)
  return forward, jax.jit(_preprocess, out_shardings=sharding)


def _preprocess(images):
  if images.dtype == jnp.uint8:
    images = images.astype(jnp.float32) / 255
  return inception.preprocess(images)


def check_images(images, what='images'):
  """NHWC with 3 channels and at least one image: a clear error otherwise."""
  if images.ndim != 4 or images.shape[-1] != 3 or not len(images):
    raise errors.UserInputError(
        f'{what} of shape {images.shape}: the Inception network takes [n, height, width, 3] '
        'RGB images (n >= 1)'
    )
