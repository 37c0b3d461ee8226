"""Datasets -> per-process numpy batches: one random-access pipeline for every dataset.

Config fields read: dataset (TFDS name, a folder with train/ and test/ subfolders of
class folders, or 'latents:<root>'), tfds_data_dir, tfds_manual_dir, tfds_download,
fashion_mnist_dir, pp.{train, test, crop, resize, inception_crop, inception_crop_area,
pad_crop, flip, color_jitter, grayscale_prob, blur_prob, blur_sigma, solarize_prob, mixup,
randaugment, channels, skip_undecodable, train_labelled_fraction}, batch, batch_eval, seed,
prefetch.

Sources. Every dataset is read by example index (vit_jax/datasets/source.py): TFDS datasets
from array_record files (vit_jax/datasets/tfds_source.py; small ones decoded into memory),
image folders file by file (vit_jax/datasets/image_folder.py), VAE latents record by record
(vit_jax/datasets/latents.py; no pixel preprocessing, pp.flip mirrors them).

Order and resume. Global position p of the run is example `index_shuffle(p mod N, seed,
epoch)` (a fresh permutation of the whole split every epoch), and every random augmentation
is seeded by (config.seed, p). Global batch s is positions [s*B, (s+1)*B); process i reads
only its slice of it. So `get_data(start_step=s)` resumes exactly, at the cost of a fresh
start whatever s is, and any process count sees the same global batches.

Eval iterates once over the whole split: the last batch is padded and `mask` marks the real
examples, so every test example counts exactly once.

Image folders (vit_jax/datasets/image_folder.py): a file that cannot be decoded is an
`errors.UserInputError` naming the file, its index and the step. With
`config.pp.skip_undecodable` it becomes a zero image with an all-zero label instead, and
train batches carry `weight` (0 for it, else 1; eval sets its `mask` to 0): batches stay a
fixed function of (seed, step), and the iterator counts (`.skipped`) and logs each one.
"""

import functools
import os
import re

from absl import logging
import jax
import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from vit_jax import errors
from vit_jax import paths
from vit_jax.datasets import color_augment
from vit_jax.datasets import image_folder
from vit_jax.datasets import labelled_subset
from vit_jax.datasets import latents
from vit_jax.datasets import preprocessing as pp_lib
from vit_jax.datasets import tfds_source
from vit_jax.datasets.source import Source


# ----------------------------------------------------------------------------------- sources
def _is_folder(config):
  return bool(config.dataset) and paths.isdir(config.dataset)


def _split_name(config, mode):
  return config.pp.train if mode == 'train' else config.pp.test


def get_dataset_info(config, split):
  """{'num_examples', 'num_classes', 'image_shape', 'class_names'} of a split spec."""
  if latents.is_latents(config.dataset):
    return latents.dataset_info(config, split)
  if _is_folder(config):
    image_folder.check_splits(config.dataset, config.pp.train, config.pp.test)
    listing = image_folder.listing(config.dataset, split)
    return dict(
        num_examples=len(listing.paths),
        num_classes=len(listing.classes),
        image_shape=(None, None, 3),
        class_names=listing.classes,
    )
  return tfds_source.dataset_info(config, split)


def check_splits(config):
  """The train split's `get_dataset_info`, after checking that both splits the run reads
  exist and hold examples: a missing split (pp.test='validation' of a dataset without one)
  or a bad slice ('train[:200%]') is an error at start, in seconds, not after training."""
  if latents.is_latents(config.dataset):
    latents.check_config(config)  # both splits, their shape against the run's
  infos = []
  for field, split in (('pp.train', config.pp.train), ('pp.test', config.pp.test)):
    try:
      info = get_dataset_info(config, split)
    except errors.UserInputError:
      raise
    except (ValueError, KeyError, AssertionError) as e:
      reason = ' '.join(re.sub(r'See format at: \S+', '', str(e)).split())
      if '__len__' in reason or '0 length' in reason:  # tfds' words for an empty slice
        reason = 'the slice is empty'
      raise errors.UserInputError(
          f'config.{field}={split!r} cannot be read from config.dataset={config.dataset!r} '
          f"({reason}); name one of its splits, optionally sliced: 'train', 'test', "
          "'train[:90%]', 'train[1000:]'."
      ) from e
    if info['num_examples'] < 1:
      raise errors.UserInputError(
          f'config.{field}={split!r} of config.dataset={config.dataset!r} has no examples; '
          'widen the slice.'
      )  # (an image folder's split with no images)
    infos.append(info)
  if labelled_subset.active(config):  # its errors at start too, in seconds
    infos[0] = dict(infos[0], num_examples=len(train_subset(config)))
  return infos[0]


def train_subset(config):
  """The split indices `config.pp.train_labelled_fraction` keeps of the train split."""
  split = config.pp.train
  where = f'split {split!r} of config.dataset={config.dataset!r}'
  if latents.is_latents(config.dataset):
    raise errors.UserInputError(
        f'{labelled_subset.FIELD} is not available with latents ({where}); set it to 1.'
    )
  if _is_folder(config):
    listing = image_folder.listing(config.dataset, split)
    labels, num_classes = listing.labels, len(listing.classes)
  else:
    loaded = tfds_source.in_memory(config, split)
    if loaded is None:
      raise errors.UserInputError(
          f'{labelled_subset.FIELD} needs the labels of {where} in memory (a split of fixed '
          'image shape under 2 GiB, or an image folder); set it to 1.'
      )
    _, labels, num_classes = loaded
  return labelled_subset.indices(labels, num_classes, config.pp.train_labelled_fraction, where)


def split_source(config, split):
  """The split's examples by index (vit_jax/datasets/source.py)."""
  if latents.is_latents(config.dataset):
    return latents.source(config, split)
  if _is_folder(config):
    listing = image_folder.listing(config.dataset, split)
    example_fn = image_folder.example_fn(listing, config.pp.skip_undecodable, config.pp.crop)
    return Source(example_fn, len(listing.paths), len(listing.classes), listing, None)
  return tfds_source.source(config, split)


# ------------------------------------------------------------------------------ preprocessing
def _example_seed(config, position):
  return tf.stack([tf.cast(config.seed, tf.int64), tf.cast(position, tf.int64)])


def _preprocess(config, image, position, train, channels=None):
  """A uint8 image, or encoded bytes to decode with `channels` (see datasets/source.py),
  -> float32 [crop, crop, pp.channels] in [-1, 1]; a latent only flipped (datasets/latents.py)."""
  pp = config.pp
  seed = _example_seed(config, position)
  if latents.is_latents(config.dataset):
    return latents.preprocess(config, image, seed, train)
  crop_now = train and pp.inception_crop
  area = tuple(pp.inception_crop_area)
  if channels is not None and crop_now:
    image, crop_now = pp_lib.decode_inception_crop(image, channels, seed, area), False
  elif channels is not None:
    image = pp_lib.decode(image, channels)
  image = pp_lib.ensure_channels(image, pp.channels)
  image = tf.cast(image, tf.float32)
  if train:
    if crop_now:
      image = pp_lib.inception_crop(image, seed, area)
    image = pp_lib.resize(image, pp.crop)
    if pp.pad_crop:
      image = pp_lib.pad_random_crop(image, pp.pad_crop, seed + 3)
    if pp.flip:
      image = pp_lib.random_flip(image, seed + 1)
    image = _color_augment(pp, image, seed)
    if pp.randaugment.num_layers:
      image = pp_lib.randaugment(
          image, seed + 2, pp.randaugment.num_layers, pp.randaugment.magnitude
      )
  elif pp.resize and pp.resize > pp.crop:
    image = pp_lib.resize_small_central_crop(image, pp.resize, pp.crop)
  else:
    image = pp_lib.resize(image, pp.crop)
  image = tf.ensure_shape(image, [pp.crop, pp.crop, pp.channels])
  return (image - 127.5) / 127.5


def _color_augment(pp, image, seed):
  """MoCo v3's photometric ops (datasets/color_augment.py); at their defaults (all off) they
  add nothing to the graph, so the pipeline's output is bitwise that of before them."""
  jitter = pp.color_jitter
  return color_augment.augment(
      image,
      seed,
      jitter=(jitter.brightness, jitter.contrast, jitter.saturation, jitter.hue),
      jitter_prob=jitter.prob,
      grayscale_prob=pp.grayscale_prob,
      blur_prob=pp.blur_prob,
      blur_sigma=tuple(pp.blur_sigma),
      solarize_prob=pp.solarize_prob,
  )


def _process_slice(batch_size, process_index, process_count, field):
  if batch_size % process_count:
    raise errors.UserInputError(
        f'{field}={batch_size} is not divisible by the process count '
        f'{process_count}; pick a multiple of it.'
    )
  local = batch_size // process_count
  return local, process_index * local


def _shuffled_index(seed, position, n):
  """The example at global `position`: a fresh permutation of the split every epoch."""
  epoch, within = position // n, position % n
  return tf.random.experimental.index_shuffle(
      within, tf.stack([tf.cast(seed, tf.int64), epoch]), n - 1
  )


def _zero_if_skipped(example, ok):
  """An undecodable image: zero image, all-zero label, weight 0 (same keys as the others)."""
  if ok is None:
    return example
  weight = tf.cast(ok, tf.float32)
  return dict(
      example, image=example['image'] * weight, label=example['label'] * weight, weight=weight
  )


# ------------------------------------------------------------------------------------ train
def _indexed_train(config, source, start_step, process_index, process_count):
  example_fn, n, num_classes = source.example_fn, source.n, source.num_classes
  batch = config.batch
  local, offset = _process_slice(batch, process_index, process_count, 'config.batch')

  def position_of(i):
    # The i-th example this process reads: slot i % local of global batch start_step + i //
    # local. Arithmetic on one flat range, not a flat_map of per-step ranges: tf.data keeps
    # a node per inner iterator, and deleting the iterator after 3,000 steps took 52 s.
    return (start_step + i // local) * batch + offset + i % local

  def example(i):
    position = position_of(i)
    image, label, ok = example_fn(_shuffled_index(config.seed, position, n))
    return _zero_if_skipped(
        {
            'image': _preprocess(config, image, position, train=True, channels=source.channels),
            'label': tf.one_hot(label, num_classes),
            'position': position,
        },
        ok,
    )

  ds = tf.data.Dataset.range(2**62).map(
      example, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True
  )
  return ds.batch(local, drop_remainder=True)


def _finish_train_batch(config, batch):
  step = batch.pop('position')[0] // config.batch
  if config.pp.mixup:
    batch = pp_lib.mixup(batch, _example_seed(config, -1 - step), config.pp.mixup)
  return batch


# ------------------------------------------------------------------------------------- eval
def _eval_dataset(config, source, process_index, process_count):
  batch = config.batch_eval
  local, offset = _process_slice(batch, process_index, process_count, 'config.batch_eval')
  example_fn, n, num_classes = source.example_fn, source.n, source.num_classes
  num_batches = -(-n // batch)
  positions = np.concatenate(
      [np.arange(s * batch + offset, s * batch + offset + local) for s in range(num_batches)]
  )
  ds = tf.data.Dataset.from_tensor_slices(positions)

  def example(position):
    image, label, ok = example_fn(tf.minimum(position, n - 1))
    real = position < n if ok is None else tf.logical_and(position < n, ok)
    image = _preprocess(config, image, position, train=False, channels=source.channels)
    return {
        'image': image * tf.cast(real, tf.float32),
        'label': tf.one_hot(label, num_classes) * tf.cast(real, tf.float32),
        'mask': tf.cast(real, tf.float32),
    }

  return ds.map(example, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True).batch(local)


# ------------------------------------------------------------------------ image-folder errors
class _FolderBatches:
  """The numpy batches of an image folder; names (or logs) the files it cannot decode.

  Batch k of this iterator holds fixed positions (train: global batch start_step + k; eval:
  eval batch k), so the examples of a failing batch are found again by decoding them one
  by one. `skipped` counts the examples skipped so far (config.pp.skip_undecodable).
  """

  def __init__(self, config, mode, source, batches, start_step, process_index, process_count):
    self._config, self._mode, self._source, self._batches = config, mode, source, batches
    self._number = start_step if mode == 'train' else 0
    size = config.batch if mode == 'train' else config.batch_eval
    self._size = size
    self._local, self._offset = _process_slice(size, process_index, process_count, 'batch')
    self.skipped = 0

  def __iter__(self):
    return self

  def _where(self, number):
    if self._mode == 'train':
      return f'the batch of train step {number + 1}'
    return f'eval batch {number}'

  def _indices(self, number):
    """The example index of each slot of batch `number` (-1: eval padding)."""
    n = self._source.n
    positions = number * self._size + self._offset + np.arange(self._local)
    if self._mode == 'eval':
      return np.where(positions < n, np.minimum(positions, n - 1), -1)
    return np.array(
        [int(_shuffled_index(self._config.seed, tf.constant(p, tf.int64), n)) for p in positions]
    )

  def __next__(self):
    number = self._number
    try:
      batch = next(self._batches)
    except image_folder.DECODE_ERRORS as e:
      listing = self._source.listing
      bad = image_folder.undecodable(listing, [i for i in self._indices(number) if i >= 0])
      if not bad:
        raise
      split = _split_name(self._config, self._mode)
      files = '; '.join(
          f'{path} (example {index} of split {split!r}: {reason})' for index, path, reason in bad
      )
      raise errors.UserInputError(
          f'cannot decode image file(s) of config.dataset={self._config.dataset!r} needed by '
          f'{self._where(number)}: {files}. Delete or replace the file(s), or set '
          'config.pp.skip_undecodable=True to run with them skipped (weight 0).'
      ) from e
    self._number += 1
    if self._config.pp.skip_undecodable:
      kept = batch['weight'] if self._mode == 'train' else batch['mask']
      if not np.all(kept):
        indices = self._indices(number)
        skipped = [int(i) for i, k in zip(indices, kept) if not k and i >= 0]
        self.skipped += len(skipped)
        image_folder.log_skipped(self._source.listing, skipped, self._where(number))
    return batch


# -------------------------------------------------------------------------------------- API
def get_data(config, mode, *, start_step=0, process_index=None, process_count=None):
  """Iterator of per-process numpy batches; see the module docstring for the contract."""
  if mode not in ('train', 'eval'):
    raise ValueError(f"mode={mode!r} must be 'train' or 'eval'")
  process_index = jax.process_index() if process_index is None else process_index
  process_count = jax.process_count() if process_count is None else process_count
  batch_field = 'config.batch' if mode == 'train' else 'config.batch_eval'
  _process_slice(
      config.batch if mode == 'train' else config.batch_eval,
      process_index,
      process_count,
      batch_field,
  )
  source = split_source(config, _split_name(config, mode))
  if mode == 'train' and labelled_subset.active(config):
    source = labelled_subset.restrict(source, train_subset(config))
  if mode == 'eval':
    ds = _eval_dataset(config, source, process_index, process_count)
  else:
    ds = _indexed_train(config, source, start_step, process_index, process_count)
    ds = ds.map(
        functools.partial(_finish_train_batch, config),
        num_parallel_calls=tf.data.AUTOTUNE,
        deterministic=True,
    )
  options = tf.data.Options()
  options.deterministic = True
  options.threading.private_threadpool_size = max(os.cpu_count() or 1, 1)
  # Without the autotuner, AUTOTUNE parallelism means one call per core. Its model grows with
  # every element: releasing the train dataset after 4,700 ViT/4 steps took 19 s (0.2 s
  # without it), which delayed the end of every long run.
  options.autotune.enabled = False
  ds = ds.with_options(options).prefetch(config.prefetch)
  logging.info(
      'Input pipeline %s: %s, start_step=%d, process %d/%d',
      mode,
      config.dataset,
      start_step,
      process_index,
      process_count,
  )
  batches = iter(tfds.as_numpy(ds))
  if source.listing is None:
    return batches
  return _FolderBatches(config, mode, source, batches, start_step, process_index, process_count)
