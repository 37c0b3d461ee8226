"""TFDS datasets read by index from array_record files.

Every TFDS dataset vit_jax prepares (download, manual dir, offline Fashion-MNIST) is written
in TFDS's `array_record` format, which `builder.as_data_source` reads by record index: the
input pipeline asks for example `i` of the split and gets it, at the same cost for any `i`.
Small datasets of fixed image shape (MNIST, Fashion-MNIST, CIFAR: under 2 GiB decoded) are
decoded once into memory; the others (ImageNet, pets, flowers) stay on disk and are read,
one record per example, as encoded bytes that preprocessing decodes (a random crop decodes
only its window).

A dataset prepared by older code in the tfrecord format cannot be read by index. Small ones
(up to 1 GiB: MNIST, Fashion-MNIST, CIFAR) get array_record files added beside the tfrecord
ones when first read, in seconds; larger ones are a clear error naming the folder and the one
command (`python -m vit_jax.datasets.to_array_record <folder>`) that does the same.
"""

import functools
import os

from absl import logging
import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from vit_jax import errors
from vit_jax import paths
from vit_jax.datasets import fashion_mnist_local
from vit_jax.datasets import preprocessing
from vit_jax.datasets import source as source_lib
from vit_jax.datasets import tfds_download
from vit_jax.datasets import to_array_record

FILE_FORMAT = 'array_record'
MAX_IN_MEMORY_BYTES = 2 << 30
# Datasets prepared as tfrecord up to this size are converted in place when first read.
AUTO_CONVERT_BYTES = 1 << 30
_RAW = tfds.decode.DeserializeMethod.RAW_BYTES


def data_dir(config):
  return config.tfds_data_dir or os.path.expanduser('~/tensorflow_datasets')


def builder(config):
  """The prepared TFDS builder: downloaded and prepared (as array_record) if needed and
  config.tfds_download (vit_jax/datasets/tfds_download.py), else, or offline, a clear error
  within seconds."""
  name = config.dataset
  if name.split('/')[0].split(':')[0] not in tfds.list_builders(with_community_datasets=False):
    raise errors.UserInputError(
        f'config.dataset={name!r} is neither a TFDS dataset nor a folder; use a TFDS name '
        '(cifar10, imagenet2012, fashion_mnist, ...) or a folder with train/ and test/ class '
        'subfolders.'
    )
  root = data_dir(config)
  found = tfds.builder(name, data_dir=root)
  if found.is_prepared():  # in whatever format; _ensure_random_access checks it
    return found
  found = tfds.builder(name, data_dir=root, file_format=FILE_FORMAT)
  if name == 'fashion_mnist' and fashion_mnist_local.source_files_present(config.fashion_mnist_dir):
    return fashion_mnist_local.prepare_fashion_mnist(config.fashion_mnist_dir, root)
  if config.tfds_manual_dir:
    found.download_and_prepare(
        download_config=tfds.download.DownloadConfig(
            manual_dir=config.tfds_manual_dir, try_download_gcs=False
        )
    )
    return found
  if not config.tfds_download:
    raise tfds_download.not_prepared_error(config, root)
  if found.MANUAL_DOWNLOAD_INSTRUCTIONS:
    raise tfds_download.manual_dir_error(found, config, root)
  return tfds_download.download_and_prepare(found, config, root)


def dataset_info(config, split):
  """{'num_examples', 'num_classes', 'image_shape', 'class_names'} of a TFDS split spec."""
  found, records = _records(config, split)
  label = found.info.features['label']
  return dict(
      num_examples=len(records),
      num_classes=label.num_classes,
      image_shape=found.info.features['image'].shape,
      class_names=list(label.names),
  )


def _ensure_random_access(config, found):
  """A dataset prepared as tfrecord: converted in place if small (MNIST, CIFAR: seconds),
  else a clear error with the command that converts it."""
  formats = found.info.available_file_formats()
  if tfds.core.file_adapters.FileFormat.ARRAY_RECORD in formats:
    return
  have = ', '.join(sorted(f.value for f in formats)) or 'none'
  size = sum(split.num_bytes for split in found.info.splits.values())
  if size <= AUTO_CONVERT_BYTES and not paths.is_remote(found.data_dir):
    logging.warning(
        '%s in %s is prepared as %s; adding array_record files beside it (%.0f MB, '
        'once) so that it can be read by index.',
        config.dataset,
        found.data_dir,
        have,
        size / 1e6,
    )
    to_array_record.convert(found.data_dir)
    return
  raise errors.UserInputError(
      f'config.dataset={config.dataset!r} in {found.data_dir} is prepared as {have}, which '
      'cannot be read by index: vit_jax reads TFDS datasets from array_record files (random '
      'access, so a resumed run starts at once). Convert it once, in place (array_record '
      'files are written next to the existing ones, same records in the same order): '
      f'`python -m vit_jax.datasets.to_array_record {found.data_dir}`, or delete the folder '
      'to have it prepared again.'
  )


@functools.lru_cache(maxsize=8)
def _cached_records(name, root, split):
  found = tfds.builder(name, data_dir=root)
  return found, found.as_data_source(split=split, deserialize_method=_RAW)


def _records(config, split):
  """(builder, serialized tf.Example records of the split, readable by index)."""
  found = builder(config)
  _ensure_random_access(config, found)
  return _cached_records(config.dataset, data_dir(config), split)


def _channels(found):
  shape = found.info.features['image'].shape
  return shape[-1] or 3


def _encoded_example_fn(found, records):
  """index -> (encoded image bytes, label, None): one record read by index, parsed in-graph."""
  features = found.info.features

  def read(index):
    return records[int(index)]

  def example_fn(index):
    serialized = tf.numpy_function(read, [index], tf.string, stateful=False)
    serialized.set_shape([])
    parsed = features.deserialize_example(
        serialized, decoders={'image': tfds.decode.SkipDecoding()}
    )
    return parsed['image'], parsed['label'], None

  return example_fn


@functools.lru_cache(maxsize=4)
def _in_memory(name, root, split, chunk=8192):
  """Every image of a small split of fixed shape decoded once: ([n, h, w, c] uint8, [n]
  int64). Records are read, parsed and decoded a chunk at a time: per record, the same took
  16.7 s for Fashion-MNIST's 60,000 train images, per chunk 2 s."""
  found, records = _cached_records(name, root, split)
  shape = found.info.features['image'].shape
  keys = {
      'image': tf.io.FixedLenFeature([], tf.string),
      'label': tf.io.FixedLenFeature([], tf.int64),
  }
  decode = functools.partial(preprocessing.decode, channels=shape[-1])

  @tf.function
  def decoded(serialized):
    parsed = tf.io.parse_example(serialized, keys)
    images = tf.map_fn(
        decode,
        parsed['image'],
        parallel_iterations=16,
        fn_output_signature=tf.TensorSpec(shape, tf.uint8),
    )
    return images, parsed['label']

  images, labels = [], []
  for start in range(0, len(records), chunk):
    serialized = records.__getitems__(list(range(start, min(start + chunk, len(records)))))
    image, label = decoded(tf.constant(serialized))
    images.append(image.numpy())
    labels.append(label.numpy())
  return np.concatenate(images), np.concatenate(labels).astype(np.int64)


def _fits_in_memory(found, n):
  shape = found.info.features['image'].shape
  return None not in shape and n * np.prod(shape) <= MAX_IN_MEMORY_BYTES


def in_memory(config, split):
  """(uint8 images [n, h, w, c], int64 labels [n], num_classes) of a small split of fixed
  image shape, or None for a split that is not kept in memory (variable shape, over 2 GiB)."""
  found, records = _records(config, split)
  if not _fits_in_memory(found, len(records)):
    return None
  images, labels = _in_memory(config.dataset, data_dir(config), split)
  return images, labels, found.info.features['label'].num_classes


def source(config, split):
  """The split as a `Source` (vit_jax/datasets/source.py)."""
  found, records = _records(config, split)
  n, channels = len(records), _channels(found)
  num_classes = found.info.features['label'].num_classes
  if _fits_in_memory(found, n):
    images, labels = _in_memory(config.dataset, data_dir(config), split)
    images_t, labels_t = tf.constant(images), tf.constant(labels)
    return source_lib.Source(
        lambda index: (images_t[index], labels_t[index], None), n, num_classes, None, None
    )
  return source_lib.Source(_encoded_example_fn(found, records), n, num_classes, None, channels)
