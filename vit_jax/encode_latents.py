"""Images to VAE latents on disk, the dataset a latent DiT trains on (docs/generation.md).

  python -m vit_jax.encode_latents --dataset=imagenet2012 --split=train \
      --data_dir=~/tensorflow_datasets --vae=hf://stabilityai/sd-vae-ft-ema \
      --image_size=256 --flip_copy --out=/data/in256_latents/train

--dataset is a TFDS name (read from --data_dir as training reads it) or an image folder
`root/<split>/<class>/*.jpg`. Each image is cropped as ADM and DiT crop (box-halved while the
short side is >= 2 * --image_size, bicubic resize of the short side, center crop), encoded
with the VAE's posterior sample (or --posterior=mean) times its scale factor, in batches
over every local device. --out receives array_record shards of --shard_size images and
`latents.json` (vit_jax/datasets/latents.py); train on them with
`--config.dataset=latents:<parent of --out>`.

Process i of n encodes its contiguous range of shards. A shard is written under a temporary
name and renamed when complete, so the same command after a kill or preemption skips the
finished shards and redoes only the rest. The noise of record r is drawn from (--seed, r):
the latents do not depend on the batch, process or device count.
"""

import json
import time

from absl import flags

from vit_jax import cli
from vit_jax import errors
from vit_jax import paths

POSTERIORS = ('sample', 'mean')


def _define_flags():
  """The command's flags, defined only when it runs (importers keep their own flags)."""
  flags.DEFINE_string('dataset', None, 'TFDS name or image folder root/<split>/<class>/*.')
  flags.DEFINE_string('split', 'train', "Split: TFDS ('train', 'validation[:1000]') or folder.")
  flags.DEFINE_string('data_dir', None, 'TFDS data_dir (local or gs://); None: the default.')
  flags.DEFINE_string('manual_dir', None, 'TFDS manual_dir (ImageNet) if not prepared yet.')
  flags.DEFINE_string('vae', None, 'diffusers AutoencoderKL folder: local, gs://, hf://.')
  flags.DEFINE_string('out', None, 'Folder of this split: shards and latents.json.')
  flags.DEFINE_integer('image_size', 256, 'Center-crop size before encoding (256, 512).')
  flags.DEFINE_bool('flip_copy', False, 'Also store the latent of each mirror image.')
  flags.DEFINE_enum('posterior', 'sample', POSTERIORS, "The posterior's sample or mean.")
  flags.DEFINE_enum('dtype', 'float32', ['float32', 'bfloat16'], 'Bytes of a stored latent.')
  flags.DEFINE_integer('shard_size', 1024, 'Images per shard (the unit of resumption).')
  flags.DEFINE_integer('batch_per_device', 32, 'Images per local device per VAE call.')
  flags.DEFINE_integer('seed', 0, 'Seed of the posterior samples.')
  flags.mark_flags_as_required(['dataset', 'vae', 'out'])


def _reader_config(dataset, split, data_dir, manual_dir):
  """The training-config fields the input pipeline reads a dataset with."""
  from vit_jax.configs import schema

  config = schema.defaults()
  config.dataset, config.tfds_data_dir, config.tfds_manual_dir = dataset, data_dir, manual_dir
  config.pp.train = config.pp.test = split
  return config


def _images(source, first, stop, size, batch):
  """Batches (uint8 [b, size, size, 3], int64 labels) of examples [first, stop), cropped as
  ADM's center_crop_arr; the crop runs in tf.data's threads (PIL releases the GIL)."""
  from PIL import Image
  import tensorflow as tf

  from vit_jax.datasets import preprocessing
  from vit_jax.evaluation import image_sources

  def crop(array):
    gray = array.shape[-1] == 1  # PIL takes grayscale as [h, w]; center_crop makes RGB
    return image_sources.center_crop(Image.fromarray(array[..., 0] if gray else array), size)

  def load(index):
    image, label, _ = source.example_fn(index)
    if source.channels is not None:
      image = preprocessing.decode(image, source.channels)
    image = tf.numpy_function(crop, [image], tf.uint8, stateful=False)
    return tf.ensure_shape(image, [size, size, 3]), label

  ds = tf.data.Dataset.range(first, stop).map(load, num_parallel_calls=tf.data.AUTOTUNE)
  return ds.batch(batch).prefetch(2).as_numpy_iterator()


def _noise(seed, record_ids, shape):
  """The posterior's standard-normal draws of each record, from (seed, record id): the same
  whatever the batch, shard or device count."""
  import jax

  key = jax.random.PRNGKey(seed)
  keys = jax.vmap(lambda i: jax.random.fold_in(key, i))(record_ids)
  return jax.vmap(lambda k: jax.random.normal(k, shape))(keys)


def _write_shard(final, records):
  """Writes `records` to `final` whole: a temporary name renamed when complete (gs://: a
  local temporary file, uploaded whole)."""
  import os
  import tempfile

  from array_record.python import array_record_module

  local = final + '.incomplete'
  if paths.is_remote(final):
    local = os.path.join(tempfile.mkdtemp(), paths.basename(final))
  writer = array_record_module.ArrayRecordWriter(local, 'group_size:1')
  for record in records:
    writer.write(record)
  writer.close()
  if paths.is_remote(final):
    with open(local, 'rb') as f:
      paths.write_bytes(final, f.read())
    os.remove(local)
  else:
    paths.move(local, final)


def _check_metadata(out, meta):
  """Writes latents.json, or checks that the one already in `out` describes this encode."""
  import jax

  path = paths.join(out, 'latents.json')
  if paths.exists(path):
    old = json.loads(paths.read_text(path))
    differ = [k for k in meta if old.get(k) != meta[k]]
    if differ:
      k = differ[0]
      raise errors.UserInputError(
          f'--out={out} holds latents of another encode ({k}: {old.get(k)!r} there, '
          f'{meta[k]!r} now); use a new --out, or the same flags to finish that one.'
      )
  elif jax.process_index() == 0:
    paths.write_text(path, json.dumps(meta, indent=1))


def encode(
    dataset,
    vae_path,
    out,
    split='train',
    data_dir=None,
    manual_dir=None,
    image_size=256,
    flip_copy=False,
    posterior='sample',
    dtype='float32',
    shard_size=1024,
    batch_per_device=32,
    seed=0,
    log=print,
):
  """Encodes this process's shards of the split into `out` (see the module docstring);
  returns the shard indices it wrote (finished shards are skipped)."""
  if dataset.startswith('latents:'):
    raise errors.UserInputError(f'--dataset={dataset!r} is latents already; give images.')
  for name, value in (('shard_size', shard_size), ('batch_per_device', batch_per_device)):
    if value < 1:
      raise errors.UserInputError(f'--{name}={value} must be >= 1')
  if posterior not in POSTERIORS:
    raise errors.UserInputError(f'--posterior={posterior!r} must be one of {POSTERIORS}')
  import jax  # after the checks above: a mistake there is one line in a second
  import numpy as np

  from vit_jax import input_pipeline
  from vit_jax.datasets import latents
  from vit_jax.models import vae

  config = _reader_config(dataset, split, data_dir, manual_dir)
  info = input_pipeline.get_dataset_info(config, split)
  module, params = vae.load(vae_path)
  factor = module.downsample_factor
  if image_size < factor or image_size % factor or module.in_channels != 3:
    raise errors.UserInputError(
        f'--image_size={image_size} must be a multiple of the VAE downsampling factor '
        f"{factor} (256 or 512 for Stable Diffusion's VAE), and --vae must encode RGB "
        f'(its in_channels is {module.in_channels}).'
    )
  n = info['num_examples']
  num_shards = -(-n // shard_size)
  latent_shape = [image_size // factor, image_size // factor, module.latent_channels]
  shards = [latents.shard_name(k, num_shards) for k in range(num_shards)]
  meta = dict(
      format=latents.FORMAT,
      shape=latent_shape,
      dtype=dtype,
      count=n * (2 if flip_copy else 1),
      images=n,
      num_classes=info['num_classes'],
      class_names=info.get('class_names'),
      vae=vae_path,
      image_size=image_size,
      scale_factor=float(module.scaling_factor),
      shift_factor=float(module.shift_factor),
      posterior=posterior,
      seed=seed,
      flip_copy=flip_copy,
      source=dict(dataset=dataset, split=split),
      shard_size=shard_size,
      shards=shards,
  )
  paths.makedirs(out)
  _check_metadata(out, meta)

  devices = jax.local_devices()
  mesh = jax.sharding.Mesh(np.array(devices), ('data',))
  sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec('data'))
  params = jax.device_put(params, jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec()))
  batch = batch_per_device * len(devices)
  source = input_pipeline.split_source(config, split)
  index, count = jax.process_index(), jax.process_count()
  mine = range(index * num_shards // count, (index + 1) * num_shards // count)
  present = set(paths.listdir(out))
  copies = 2 if flip_copy else 1
  noise_fn = jax.jit(_noise, static_argnums=2)
  written = []
  for done, k in enumerate(mine, 1):
    where = f'shard {k + 1}/{num_shards} ({done}/{len(mine)} of process {index})'
    if shards[k] in present:
      log(f'{where}: {shards[k]} exists, skipped')
      continue
    started = time.time()
    first, stop = k * shard_size, min((k + 1) * shard_size, n)
    records, image = [], first
    for images, labels in _images(source, first, stop, image_size, batch):
      x = images.astype(np.float32) / 127.5 - 1.0
      ids = np.arange(image, image + len(x)) * copies  # record ids of the originals
      image += len(x)
      if flip_copy:
        x, ids = np.concatenate([x, x[:, :, ::-1]]), np.concatenate([ids, ids + 1])
      noise = None
      if posterior == 'sample':
        noise = np.asarray(noise_fn(seed, ids, tuple(latent_shape)))
      z = vae.encode_to_latents(module, params, x, None, batch, sharding, noise)
      if flip_copy:  # record 2i: image i, record 2i + 1: its mirror image
        z = np.stack([z[: len(labels)], z[len(labels) :]], 1).reshape((-1,) + z.shape[1:])
        labels = np.repeat(labels, 2)
      stored = latents.as_numpy(z, dtype)
      records += [latents.serialize(a, label) for a, label in zip(stored, labels)]
    _write_shard(paths.join(out, shards[k]), records)
    written.append(k)
    seconds = time.time() - started
    log(
        f'{where}: images {first}..{stop - 1} -> {len(records)} latents in {seconds:.1f} s '
        f'({(stop - first) / max(seconds, 1e-9):.1f} images/s)'
    )
  return written


def main(argv):
  if len(argv) > 1:
    raise errors.UserInputError(f'unexpected arguments {argv[1:]}; everything is a --flag')
  f = flags.FLAGS
  written = encode(
      f.dataset,
      f.vae,
      f.out,
      split=f.split,
      data_dir=f.data_dir,
      manual_dir=f.manual_dir,
      image_size=f.image_size,
      flip_copy=f.flip_copy,
      posterior=f.posterior,
      dtype=f.dtype,
      shard_size=f.shard_size,
      batch_per_device=f.batch_per_device,
      seed=f.seed,
      log=lambda line: print(line, flush=True),
  )
  print(f'{f.out}: {len(written)} shard(s) written by this process.', flush=True)
  return 0


if __name__ == '__main__':
  _define_flags()
  cli.run(main)
