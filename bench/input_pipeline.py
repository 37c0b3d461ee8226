"""Input pipeline: resume cost at a million records, and train throughput per CPU core.

  python bench/input_pipeline.py                    # both parts
  python bench/input_pipeline.py --part=resume      # or --part=throughput

Resume. `generated_jpegs/million` (1,000,000 32x32 JPEGs in array_record, written on first
use, ~1.5 GB) with batch 256: seconds from `get_data(start_step=s)` to its first batch for
s = 0 and s = 1,000,000 (256 M examples in, epoch 256), alternated, and the batches after a
resume compared bitwise with an uninterrupted run. For comparison, the records per second at
which the old streamed path skipped records to resume.

Throughput. `generated_jpegs/imagenet_like` (4,096 500x375 JPEGs, prepared both as
array_record and as tfrecord) through the ImageNet train preprocessing (decode, inception
crop to 224, flip, RandAugment 2/9), batch 128, each engine in its own process pinned to 1
core and then to 2 (taskset):
  - streamed: the tf.data pipeline vit_jax had before (tfrecord shards read in order through a
    shuffle buffer, full decode, then crop); rebuilt here as the baseline.
  - indexed: vit_jax.input_pipeline today (array_record by index, window decode).
  - grain: the same per-example TensorFlow preprocessing run by grain 0.2 over the same
    array_record records, in its threads (workers=0) or in worker processes.
The probe line prints a float32 2048x2048 matmul rate, to compare hosts. grain comes with
`pip install '.[bench]'`.
"""

import argparse
import importlib.util
import multiprocessing
import os
import subprocess
import sys
import time

import host_probe  # bench/host_probe.py, beside this file
import numpy as np

BATCH = 128
RESUME_BATCH = 256
RESUME_STEP = 1_000_000
IMAGENET_TRAIN = 1_281_167


def _config(dataset, data_dir, crop, batch, randaugment):
  from vit_jax.configs import common

  config = common.get_config()
  config.dataset, config.tfds_data_dir, config.tfds_download = dataset, data_dir, False
  config.batch, config.pp.crop = batch, crop
  config.pp.randaugment.num_layers, config.pp.randaugment.magnitude = randaugment
  return config


def _seconds(fn):
  start = time.perf_counter()
  fn()
  return time.perf_counter() - start


# ---------------------------------------------------------------------------------- resume
def resume(data_dir, repeats):
  from vit_jax import input_pipeline
  from vit_jax.datasets import generated_jpegs

  start = time.perf_counter()
  generated_jpegs.prepare('million', data_dir)
  print(f'generated_jpegs/million ready in {time.perf_counter() - start:.0f} s', flush=True)
  config = _config('generated_jpegs/million', data_dir, 32, RESUME_BATCH, (2, 9))
  print(f'examples: {input_pipeline.get_dataset_info(config, "train")["num_examples"]:,}')
  times = {0: [], RESUME_STEP: []}
  for _ in range(repeats):
    for step in times:
      t = time.perf_counter()
      next(input_pipeline.get_data(config, 'train', start_step=step))
      times[step].append(time.perf_counter() - t)
  print('| start_step | seconds to first batch (each run) | median |\n|---|---|---|')
  for step, seconds in times.items():
    print(f'| {step:,} | {", ".join(f"{s:.2f}" for s in seconds)} | ' f'{np.median(seconds):.2f} |')
  uninterrupted = input_pipeline.get_data(config, 'train', start_step=RESUME_STEP - 2)
  expected = [next(uninterrupted) for _ in range(4)][2:]
  resumed = input_pipeline.get_data(config, 'train', start_step=RESUME_STEP)
  same = all(
      np.array_equal(e[k], next_batch[k])
      for e, next_batch in zip(expected, [next(resumed) for _ in range(2)])
      for k in e
  )
  print(
      f'batches {RESUME_STEP + 1:,}-{RESUME_STEP + 2:,} after resuming at step '
      f'{RESUME_STEP:,} bitwise equal to a run from step {RESUME_STEP - 2:,}: {same}'
  )
  streamed_resume(data_dir)


def streamed_resume(data_dir, skip=40_960):
  """What resuming cost before: the streamed path skipped `skip` records (10 epochs of
  imagenet_like, 57 KB JPEGs) by reading them; extrapolated to a 300-epoch ImageNet run."""
  from vit_jax.datasets import generated_jpegs

  root = os.path.join(data_dir, 'throughput', 'tfrecord')
  generated_jpegs.prepare('imagenet_like', root, file_format='tfrecord')
  config = _config('generated_jpegs/imagenet_like', root, 224, BATCH, (2, 9))
  next(_streamed(config))  # warm-up: imports, tracing, page cache
  first = {
      n: min(_seconds(lambda n=n: next(_streamed(config, n))) for _ in range(2)) for n in (0, skip)
  }
  rate = skip / (first[skip] - first[0])
  records = 299 * IMAGENET_TRAIN
  print(
      f'streamed path (before): first batch {first[0]:.2f} s from the start, '
      f'{first[skip]:.2f} s after skipping {skip:,} records: {rate:,.0f} records/s read '
      f'and discarded. A 300-epoch ImageNet run resumed in epoch 300 would skip '
      f'{records / 1e6:.0f} M records: {records / rate / 3600:.1f} h at that rate '
      '(ImageNet JPEGs average ~110 KB, twice these).'
  )


# ------------------------------------------------------------------------------ throughput
def _streamed(config, skip=0):
  """The pre-array_record pipeline (vit_jax before this change), as the baseline."""
  import tensorflow as tf
  import tensorflow_datasets as tfds

  from vit_jax import input_pipeline

  builder = tfds.builder(config.dataset, data_dir=config.tfds_data_dir)
  num_classes = builder.info.features['label'].num_classes
  ds = builder.as_dataset(
      split='train',
      shuffle_files=True,
      read_config=tfds.ReadConfig(shuffle_seed=0),
      decoders={'image': tfds.decode.SkipDecoding()},
  )
  ds = ds.repeat().shuffle(4096, seed=0).enumerate().skip(skip)  # resume: undecoded records

  def example(position, features):
    image = builder.info.features['image'].decode_example(features['image'])
    return {
        'image': input_pipeline._preprocess(config, image, position, train=True),
        'label': tf.one_hot(features['label'], num_classes),
    }

  ds = ds.map(example, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  options = tf.data.Options()
  options.autotune.enabled = False
  options.threading.private_threadpool_size = len(os.sched_getaffinity(0))
  return iter(tfds.as_numpy(ds.batch(BATCH, drop_remainder=True).with_options(options).prefetch(2)))


class _GrainExample:
  """grain's per-record transform: vit_jax's preprocessing as one tf.function call."""

  def __init__(self, config):
    self._config, self._fn = config, None

  def _build(self):
    import tensorflow as tf
    import tensorflow_datasets as tfds

    from vit_jax import input_pipeline

    features = tfds.builder(self._config.dataset, data_dir=self._config.tfds_data_dir).info.features

    @tf.function(
        input_signature=[tf.TensorSpec([], tf.string), tf.TensorSpec([], tf.int64)], autograph=False
    )
    def fn(serialized, position):
      parsed = features.deserialize_example(
          serialized, decoders={'image': tfds.decode.SkipDecoding()}
      )
      image = input_pipeline._preprocess(
          self._config, parsed['image'], position, train=True, channels=3
      )
      return image, tf.one_hot(parsed['label'], 1000)

    self._fn = fn

  def __call__(self, item):
    position, serialized = item
    if self._fn is None:
      self._build()
    image, label = self._fn(serialized, position)
    return {'image': image.numpy(), 'label': label.numpy()}


def _grain(config, workers):
  import grain
  import tensorflow_datasets as tfds

  records = tfds.builder(config.dataset, data_dir=config.tfds_data_dir).as_data_source(
      split='train', deserialize_method=tfds.decode.DeserializeMethod.RAW_BYTES
  )
  ds = grain.MapDataset.source(records).seed(0).shuffle().repeat()
  ds = ds.map_with_index(lambda i, record: (i, record)).map(_GrainExample(config))
  ds = ds.batch(BATCH, drop_remainder=True).to_iter_dataset(
      grain.ReadOptions(num_threads=len(os.sched_getaffinity(0)), prefetch_buffer_size=2)
  )
  if workers:
    ds = ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=workers))
  return iter(ds)


def measure(engine, data_dir, batches, workers):
  """Prints examples/s of one engine in this process (after two warm-up batches)."""
  if engine == 'grain':
    from absl import flags

    flags.FLAGS(['bench'])  # grain reads absl flags
  from vit_jax import input_pipeline

  root = os.path.join(data_dir, 'tfrecord' if engine == 'streamed' else 'array_record')
  config = _config('generated_jpegs/imagenet_like', root, 224, BATCH, (2, 9))
  if engine == 'streamed':
    batches_iter = _streamed(config)
  elif engine == 'indexed':
    batches_iter = input_pipeline.get_data(config, 'train')
  else:
    batches_iter = _grain(config, workers)
  for _ in range(2):
    next(batches_iter)
  seconds = _seconds(lambda: [next(batches_iter) for _ in range(batches)])
  print(f'RESULT {batches * BATCH / seconds:.1f}', flush=True)
  for child in multiprocessing.active_children():  # grain's workers hold our stdout open
    child.kill()
  os._exit(0)  # tf.data threads: no slow teardown


def throughput(data_dir, batches):
  from vit_jax.datasets import generated_jpegs

  for fmt in ('array_record', 'tfrecord'):
    generated_jpegs.prepare('imagenet_like', os.path.join(data_dir, fmt), file_format=fmt)
  runs = [('streamed', 0), ('indexed', 0)]
  if importlib.util.find_spec('grain'):
    runs += [('grain', 0), ('grain', 1), ('grain', 2)]
  else:
    print("grain is not installed: its rows are left out (pip install '.[bench]').")
  print('| engine | workers | cores | examples/s | per core |\n|---|---|---|---|---|')
  for cores in ('0', '0,1'):
    for engine, workers in runs:
      if engine == 'grain' and workers > len(cores.split(',')):
        continue
      out = subprocess.run(
          [
              'taskset',
              '-c',
              cores,
              sys.executable,
              __file__,
              '--part=measure',
              f'--engine={engine}',
              f'--workers={workers}',
              f'--batches={batches}',
              f'--data_dir={data_dir}',
          ],
          capture_output=True,
          text=True,
          check=False,
      )
      rate = [l for l in out.stdout.splitlines() if l.startswith('RESULT')]
      if not rate:
        print(f'| {engine} | {workers} | failed: {out.stderr.strip().splitlines()[-1:]} |')
        continue
      rate, count = float(rate[0].split()[1]), len(cores.split(','))
      print(f'| {engine} | {workers} | {count} | {rate:.0f} | {rate / count:.0f} |', flush=True)


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument('--part', default='all', choices=['all', 'resume', 'throughput', 'measure'])
  parser.add_argument('--data_dir', default='/tmp/vit_jax_bench/tfds')
  parser.add_argument('--repeats', type=int, default=3)
  parser.add_argument('--batches', type=int, default=12)
  parser.add_argument('--engine', default='indexed')
  parser.add_argument('--workers', type=int, default=0)
  args = parser.parse_args()
  if args.part == 'measure':
    measure(args.engine, args.data_dir, args.batches, args.workers)
    return
  print(host_probe.line())
  if args.part in ('all', 'resume'):
    resume(args.data_dir, args.repeats)
  if args.part in ('all', 'throughput'):
    throughput(os.path.join(args.data_dir, 'throughput'), args.batches)


if __name__ == '__main__':
  main()
