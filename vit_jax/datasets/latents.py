"""Datasets of VAE latents on disk: `config.dataset='latents:<root>'`, read by index.

`python -m vit_jax.encode_latents` writes one folder per split: `latents.json` (shape, dtype,
count, classes, the VAE and preprocessing that made them) and array_record shards
`latents-0000k-of-0000n.array_record`, one serialized tf.train.Example per latent (`latent`:
its raw float32 or bfloat16 bytes, `shape`, `label`). With `flip_copy`, record 2i is image i
and record 2i+1 its mirror image, as fast-DiT stores both.

A run names the root; `config.pp.train` and `config.pp.test` name split folders under it,
optionally sliced as TFDS splits are ('train', 'validation', 'train[:-10000]',
'train[99%:]'), so the eval split is a second folder or a held-out part of the same one.
Records are read one by one by index (random access: a resumed run starts at once); latents
skip pixel preprocessing, and `pp.flip` mirrors them.
"""

import functools
import json
import re

from absl import logging
import numpy as np
import tensorflow as tf

from vit_jax import errors
from vit_jax import paths
from vit_jax.datasets import source as source_lib

PREFIX = 'latents:'
METADATA = 'latents.json'
FORMAT = 'vit_jax latents v1'
DTYPES = {'float32': tf.float32, 'bfloat16': tf.bfloat16}
_ENCODE = 'python -m vit_jax.encode_latents (docs/generation.md)'
_SPLIT = re.compile(r'^([^\[\]]+?)(?:\[(-?\d+%?)?:(-?\d+%?)?\])?$')
# Preprocessing fields that act on pixels: with latents each is a mistake, not a no-op.
_PIXEL_FIELDS = (
    ('pp.inception_crop', 'crops pixels'),
    ('pp.pad_crop', 'pads and crops pixels'),
    ('pp.randaugment.num_layers', 'augments pixels'),
    ('pp.mixup', 'mixes images'),
    ('pp.resize', 'resizes pixels'),
    ('pp.on_device', 'keeps a TFDS split of images on the devices'),
    ('pp.skip_undecodable', 'skips image files'),
)


def is_latents(dataset):
  return bool(dataset) and dataset.startswith(PREFIX)


def shard_name(k, num_shards):
  return f'latents-{k:05d}-of-{num_shards:05d}.array_record'


# ------------------------------------------------------------------------------ records
def serialize(latent, label):
  """One record: the latent's raw bytes (its dtype is the folder's), shape and label."""
  feature = {
      'latent': tf.train.Feature(bytes_list=tf.train.BytesList(value=[latent.tobytes()])),
      'shape': tf.train.Feature(int64_list=tf.train.Int64List(value=list(latent.shape))),
      'label': tf.train.Feature(int64_list=tf.train.Int64List(value=[int(label)])),
  }
  return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()


def parse(serialized, shape, dtype):
  """A record -> (float32 latent of `shape`, int64 label), in-graph."""
  parsed = tf.io.parse_single_example(
      serialized,
      {
          'latent': tf.io.FixedLenFeature([], tf.string),
          'label': tf.io.FixedLenFeature([], tf.int64),
      },
  )
  latent = tf.reshape(tf.io.decode_raw(parsed['latent'], DTYPES[dtype]), shape)
  return tf.cast(latent, tf.float32), parsed['label']


# ---------------------------------------------------------------------------- metadata
def root_of(config):
  """The folder of `config.dataset='latents:<root>'`; a clear error when it is unset."""
  root = config.dataset[len(PREFIX) :]
  if not root:
    raise errors.UserInputError(
        f'config.dataset={config.dataset!r} names no folder of latents; make one with '
        f'{_ENCODE} and set --config.dataset=latents:<that folder>.'
    )
  return root


def _split_parts(config, split):
  """(split folder, start, stop or None) of a split spec such as 'train[:-1000]'."""
  match = _SPLIT.match(split or '')
  if not match:
    raise errors.UserInputError(
        f'config.dataset={config.dataset!r}: split {split!r} is not a split folder name, '
        "optionally sliced ('train', 'train[:-10000]', 'train[99%:]')."
    )
  return paths.join(root_of(config), match.group(1)), match.group(2), match.group(3)


def _bound(text, n, default):
  if text is None:
    return default
  value = round(n * int(text[:-1]) / 100) if text.endswith('%') else int(text)
  return min(max(value + n if value < 0 else value, 0), n)


def read_metadata(folder):
  """The `latents.json` of a split folder, after checking that every shard it lists exists."""
  path = paths.join(folder, METADATA)
  if not paths.exists(path):
    raise errors.MissingInputError(
        f'{folder!r} holds no {METADATA}: it is not a folder of latents; make one with '
        f'{_ENCODE}.'
    )
  meta = json.loads(paths.read_text(path))
  present = set(paths.listdir(folder))  # one listing, not a request per shard on gs://
  missing = [s for s in meta['shards'] if s not in present]
  if missing:
    raise errors.MissingInputError(
        f'{folder!r}: {len(missing)} of {len(meta["shards"])} latent shards are missing '
        f'(e.g. {missing[0]}): the encode did not finish; run the same encode_latents command '
        'again to write them (finished shards are kept).'
    )
  return meta


@functools.lru_cache(maxsize=8)
def _split(config_dataset, folder, start, stop):
  meta = read_metadata(folder)
  first, end = _bound(start, meta['count'], 0), _bound(stop, meta['count'], meta['count'])
  return meta, first, max(end - first, 0)


def split_info(config, split):
  """(metadata, first record, number of records) of a split spec."""
  folder, start, stop = _split_parts(config, split)
  return _split(config.dataset, folder, start, stop)


def dataset_info(config, split):
  """{'num_examples', 'num_classes', 'image_shape', 'class_names'} of a split spec."""
  meta, _, n = split_info(config, split)
  return dict(
      num_examples=n,
      num_classes=meta['num_classes'],
      image_shape=tuple(meta['shape']),
      class_names=meta.get('class_names'),
  )


# ------------------------------------------------------------------------------ checks
def check_config(config):
  """Both splits are complete folders of the same latents, and the run fits them: pp.crop
  and pp.channels equal the latent shape, the model's patch divides it, no pixel
  preprocessing. Raised at start, before anything compiles."""
  from vit_jax.configs import schema  # configs import nothing of the data layer

  for field, what in _PIXEL_FIELDS:
    value = schema.get(config, field)
    if value:
      raise errors.UserInputError(
          f'config.{field}={value!r} {what}, but config.dataset={config.dataset!r} holds '
          f'latents (no pixel preprocessing; pp.flip mirrors latents); turn it off.'
      )
  train = split_info(config, config.pp.train)[0]
  test = split_info(config, config.pp.test)[0]
  shape = tuple(train['shape'])
  if tuple(test['shape']) != shape or test['num_classes'] != train['num_classes']:
    raise errors.UserInputError(
        f'config.dataset={config.dataset!r}: split {config.pp.test!r} holds latents of shape '
        f'{test["shape"]} with {test["num_classes"]} classes, split {config.pp.train!r} of '
        f'shape {list(shape)} with {train["num_classes"]}; encode both with the same VAE and '
        '--image_size.'
    )
  size, channels = shape[0], shape[2]
  where = f'the latents of config.dataset={config.dataset!r} are {"x".join(map(str, shape))}'
  if config.pp.crop != size or shape[0] != shape[1]:
    raise errors.UserInputError(
        f'config.pp.crop={config.pp.crop}, but {where}; set --config.pp.crop={size}.'
    )
  if config.pp.channels != channels:
    raise errors.UserInputError(
        f'config.pp.channels={config.pp.channels}, but {where}; set '
        f'--config.pp.channels={channels}.'
    )
  patch = config.model.get('patch_size')
  if patch and size % patch:
    raise errors.UserInputError(
        f'config.model.patch_size={patch} does not divide {where}; pick a patch size that '
        f'divides {size}.'
    )
  vae = config.get('diffusion', {}).get('vae')
  if vae and vae != train.get('vae'):
    logging.warning(
        'config.diffusion.vae=%r decodes samples, but the latents were encoded with %r.',
        vae,
        train.get('vae'),
    )


# ------------------------------------------------------------------------------ source
@functools.lru_cache(maxsize=8)
def _records(folder, shards):
  from array_record.python import array_record_data_source

  return array_record_data_source.ArrayRecordDataSource([paths.join(folder, s) for s in shards])


def source(config, split):
  """The split as a `Source` whose example_fn gives (float32 latent, label, None)."""
  folder = _split_parts(config, split)[0]
  meta, first, n = split_info(config, split)
  records = _records(folder, tuple(meta['shards']))
  shape, dtype = list(meta['shape']), meta['dtype']

  def read(index):
    return records[first + int(index)]

  def example_fn(index):
    serialized = tf.numpy_function(read, [index], tf.string, stateful=False)
    serialized.set_shape([])
    latent, label = parse(serialized, shape, dtype)
    return latent, label, None

  return source_lib.Source(example_fn, n, meta['num_classes'], None, None)


def preprocess(config, latent, seed, train):
  """A latent as the model sees it: mirrored at random in training with pp.flip."""
  if train and config.pp.flip:
    latent = tf.image.stateless_random_flip_left_right(latent, seed + 1)
  shape = [config.pp.crop, config.pp.crop, config.pp.channels]
  return tf.ensure_shape(latent, shape)


def as_numpy(latents, dtype):
  """float32 latents as the bytes of `dtype` ('float32' or 'bfloat16')."""
  if dtype == 'bfloat16':
    import ml_dtypes

    return np.asarray(latents, np.float32).astype(ml_dtypes.bfloat16)
  return np.asarray(latents, np.float32)
