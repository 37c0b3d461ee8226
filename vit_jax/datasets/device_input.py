"""`config.pp.on_device`: a small training set kept on the devices, batches made in the step.

On a CPU host the tf.data pipeline and the devices share the same cores. With Fashion-MNIST on
2 cores, the PiT step ran at 814-842 examples/s fed by tf.data against 969-1,131 on the same
batch fed again (bench/train_throughput.py): the pipeline's threads and the per-step copy
take the cores from the step. With `on_device`, the whole train split is preprocessed once
(the deterministic part: channels, resize to `pp.crop`), copied to every device, and each
step gathers its batch inside the jitted train step, so the host only dispatches.

The order follows the same rule as the host pipeline (vit_jax/input_pipeline.py): global
position p of the run is example `shuffle(p mod N)` of a fresh permutation every epoch, and
its flip is drawn from (seed, p); global batch s is positions [s*B, (s+1)*B). Batches are a
function of the step only, so resume is exact. The permutation and the flips are JAX's, not
TensorFlow's: the batches are not those of the host pipeline, and runs are deterministic
either way.

Only what is cheap in the step is supported: `pp.flip`. Inception crop, pad-and-crop,
RandAugment, the MoCo-v3 colour ops, mixup, image folders and splits that are not kept in
memory are an error naming the field.
"""

import collections

import jax
import jax.numpy as jnp
import numpy as np
import tensorflow as tf

from vit_jax import errors
from vit_jax import paths
from vit_jax.datasets import labelled_subset
from vit_jax.datasets import preprocessing
from vit_jax.datasets import tfds_source
from vit_jax.runtime import partitioning

DeviceData = collections.namedtuple('DeviceData', 'images labels')
_FEISTEL_ROUNDS = 6
_FLIP_STREAM = 0x5EED  # folded into the seed's key: flips draw apart from the order
# Host-side preprocessing runs this many images at a time (bounded memory for the resize).
_CHUNK = 8192


_JITTER = ('brightness', 'contrast', 'saturation', 'hue')


def enabled(config):
  return bool(config.pp.get('on_device', False))


def check(config):
  """Raises errors.UserInputError when `pp.on_device` is set with what it cannot do."""
  if not enabled(config):
    return
  pp = config.pp
  unsupported = [
      ('pp.inception_crop', pp.inception_crop),
      ('pp.pad_crop', pp.pad_crop),
      ('pp.randaugment.num_layers', pp.randaugment.num_layers),
      *((f'pp.color_jitter.{k}', pp.color_jitter[k]) for k in _JITTER),
      ('pp.grayscale_prob', pp.grayscale_prob),
      ('pp.blur_prob', pp.blur_prob),
      ('pp.solarize_prob', pp.solarize_prob),
      ('pp.mixup', pp.mixup),
      ('pp.skip_undecodable', pp.skip_undecodable),
  ]
  for field, value in unsupported:
    if value:
      raise errors.UserInputError(
          f'config.{field}={value!r} is not available with config.pp.on_device=True, which '
          'gathers batches inside the train step and supports only pp.flip; set '
          f'config.{field} off or config.pp.on_device=False.'
      )
  if config.dataset and paths.isdir(config.dataset):
    raise errors.UserInputError(
        f'config.pp.on_device=True needs a TFDS dataset kept in memory; config.dataset='
        f'{config.dataset!r} is an image folder. Set config.pp.on_device=False.'
    )


def host_arrays(config):
  """(images, int32 labels, num_classes) of the train split after the deterministic
  preprocessing: uint8 when no resize is needed, else the float32 resize (0-255 scale)."""
  loaded = tfds_source.in_memory(config, config.pp.train)
  if loaded is None:
    raise errors.UserInputError(
        f'config.pp.on_device=True needs a split of fixed image shape under 2 GiB; '
        f'config.dataset={config.dataset!r} split {config.pp.train!r} is not one. Set '
        'config.pp.on_device=False.'
    )
  images, labels, num_classes = loaded
  if labelled_subset.active(config):  # the subset's order: index i is split example chosen[i]
    chosen = labelled_subset.indices(
        labels,
        num_classes,
        config.pp.train_labelled_fraction,
        f'split {config.pp.train!r} of config.dataset={config.dataset!r}',
    )
    images, labels = images[chosen], labels[chosen]
  crop, channels = config.pp.crop, config.pp.channels
  if images.shape[1:] == (crop, crop, channels):
    return images, labels.astype(np.int32), num_classes
  out = []
  for start in range(0, len(images), _CHUNK):
    chunk = preprocessing.ensure_channels(tf.constant(images[start : start + _CHUNK]), channels)
    chunk = tf.cast(chunk, tf.float32)
    if chunk.shape[1:3] != (crop, crop):  # as preprocessing.resize, on a whole chunk
      chunk = tf.image.resize(chunk, [crop, crop], method='bilinear', antialias=True)
    out.append(chunk.numpy())
  return np.concatenate(out), labels.astype(np.int32), num_classes


def load(config, mesh):
  """The train split on every device of `mesh` (replicated), and its class count."""
  images, labels, num_classes = host_arrays(config)
  replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  put = lambda x: jax.make_array_from_callback(x.shape, replicated, lambda index: x[index])
  return DeviceData(put(images), put(labels)), num_classes


def _mix(x, key):
  """A 32-bit mixing function (xorshift-multiply) of x and a round key."""
  x = (x ^ key) * jnp.uint32(0x9E3779B1)
  x = (x ^ (x >> 15)) * jnp.uint32(0x85EBCA6B)
  return x ^ (x >> 13)


def index_shuffle(index, keys, n):
  """A permutation of [0, n) keyed by `keys` (uint32 [rounds]), applied to `index` (int).

  A balanced Feistel network on the smallest even power of two >= n is a bijection of that
  domain; values that land outside [0, n) are walked through it again until inside (cycle
  walking), which keeps it a bijection of [0, n).
  """
  half = max(1, (int(n - 1).bit_length() + 1) // 2)
  mask = jnp.uint32((1 << half) - 1)

  def permute(x):
    left, right = x >> half, x & mask
    for r in range(keys.shape[0]):
      left, right = right, left ^ (_mix(right, keys[r]) & mask)
    return (left << half) | right

  x = permute(index.astype(jnp.uint32))
  x = jax.lax.while_loop(lambda x: jnp.any(x >= n), lambda x: jnp.where(x >= n, permute(x), x), x)
  return x.astype(jnp.int32)


def _epoch_keys(seed, epoch):
  key = jax.random.fold_in(jax.random.PRNGKey(seed), epoch)
  return jax.random.bits(key, (_FEISTEL_ROUNDS,), jnp.uint32)


def indices_at(seed, start, batch, n):
  """The example index of global positions [start, start + batch) (a fresh permutation of
  the split every epoch)."""
  positions = start + jnp.arange(batch, dtype=jnp.int32)
  epoch, within = positions // n, positions % n
  # A batch spans at most two epochs: shuffle under both keys, keep each position's own.
  first = start // n
  a = index_shuffle(within, _epoch_keys(seed, first), n)
  b = index_shuffle(within, _epoch_keys(seed, first + 1), n)
  return jnp.where(epoch == first, a, b), positions


def batch_at(config, data, step, num_classes, mesh=None):
  """The global train batch of `step` (0-based) with the host pipeline's keys: float32 images
  in [-1, 1] and one-hot labels.

  The indices and flips of the whole batch are computed on every device (a few hundred
  integers; the cycle walk's loop would otherwise need a collective per round); under `mesh`
  each device then gathers and flips only its own slice.
  """
  n = data.labels.shape[0]
  indices, positions = indices_at(
      config.seed, step.astype(jnp.int32) * config.batch, config.batch, n
  )
  if mesh is not None:  # else sharding propagation partitions the walk's loop after all
    replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    indices, positions = jax.lax.with_sharding_constraint((indices, positions), replicated)
  own_slice = (
      lambda x: x
      if mesh is None
      else jax.lax.with_sharding_constraint(x, partitioning.batch_sharding(mesh))
  )
  indices = own_slice(indices)
  images = data.images[indices].astype(jnp.float32)
  if config.pp.flip:  # flips drawn only when used
    key = jax.random.fold_in(jax.random.PRNGKey(config.seed), _FLIP_STREAM)
    flip = own_slice(
        jax.vmap(lambda p: jax.random.bernoulli(jax.random.fold_in(key, p)))(positions)
    )
    images = jnp.where(flip[:, None, None, None], images[:, :, ::-1], images)
  return {
      'image': (images - 127.5) / 127.5,
      'label': jax.nn.one_hot(data.labels[indices], num_classes),
  }
