"""Prepares TFDS `fashion_mnist` from local idx files (Debian's `dataset-fashion-mnist`).

The result is the ordinary TFDS dataset (same name, version, features and splits as
`tfds.builder('fashion_mnist')`), written to `data_dir` in the array_record format without any
network access.
"""

import gzip
import os
import shutil
import tempfile

from absl import logging
import tensorflow_datasets as tfds
from tensorflow_datasets.image_classification import mnist

from vit_jax import errors

DEFAULT_SOURCE_DIR = '/usr/share/datasets/fashion-mnist'
FILES = {
    'train': ('train-images-idx3-ubyte.gz', 'train-labels-idx1-ubyte.gz', 60_000),
    'test': ('t10k-images-idx3-ubyte.gz', 't10k-labels-idx1-ubyte.gz', 10_000),
}


def source_files_present(source_dir):
  return all(
      os.path.exists(os.path.join(source_dir, name))
      for images, labels, _ in FILES.values()
      for name in (images, labels)
  )


class LocalFashionMNIST(mnist.FashionMNIST, skip_registration=True):
  """tfds's FashionMNIST whose split generators read local .gz files instead of URLs."""

  name = 'fashion_mnist'

  def __init__(self, *, source_dir, **kwargs):
    self._source_dir = source_dir
    super().__init__(**kwargs)

  def _split_generators(self, dl_manager):
    del dl_manager  # nothing is downloaded
    unpacked = self.unpacked_dir = tempfile.mkdtemp(prefix='fashion_mnist_')
    splits = []
    for split, (images, labels, count) in FILES.items():
      paths = []
      for name in (images, labels):
        out = os.path.join(unpacked, name[:-3])
        with gzip.open(os.path.join(self._source_dir, name), 'rb') as src, open(out, 'wb') as dst:
          dst.write(src.read())
        paths.append(out)
      splits.append(
          tfds.core.SplitGenerator(
              name=split,
              gen_kwargs=dict(num_examples=count, data_path=paths[0], label_path=paths[1]),
          )
      )
    return splits


def prepare_fashion_mnist(source_dir, data_dir):
  """Writes TFDS `fashion_mnist` into `data_dir` from the idx files in `source_dir`."""
  if not source_files_present(source_dir):
    raise errors.MissingInputError(
        f'config.fashion_mnist_dir={source_dir!r} does not hold the four Fashion-MNIST idx '
        'files; on Debian: `apt-get install dataset-fashion-mnist`, or point '
        'config.fashion_mnist_dir at a folder with them.'
    )
  logging.info('Preparing fashion_mnist in %s from %s (offline)', data_dir, source_dir)
  builder = LocalFashionMNIST(source_dir=source_dir, data_dir=data_dir, file_format='array_record')
  try:
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(try_download_gcs=False)
    )
  finally:
    shutil.rmtree(getattr(builder, 'unpacked_dir', ''), ignore_errors=True)
  return builder
