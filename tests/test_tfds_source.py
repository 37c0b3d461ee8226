"""TFDS datasets read by index from array_record: resume, process slices, eval, decoding,
and the error (and its conversion command) for datasets prepared as tfrecord."""

import io
import os
import re
import subprocess
import sys

import numpy as np
from PIL import Image
from pipeline_configs import pipeline_config
import pytest
import tensorflow as tf

from vit_jax import errors
from vit_jax import input_pipeline
from vit_jax.datasets import generated_jpegs
from vit_jax.datasets import preprocessing
from vit_jax.datasets import tfds_source

TINY = 'generated_jpegs/tiny'


def _config(data_dir, **overrides):
  """generated_jpegs/tiny at 16x16 with every train augmentation but mixup."""
  return pipeline_config(
      **{
          'dataset': TINY,
          'tfds_data_dir': data_dir,
          'tfds_download': False,
          'batch': 8,
          'batch_eval': 8,
          'pp.crop': 16,
          'pp.resize': 20,
          'pp.inception_crop': True,
          'pp.randaugment.num_layers': 2,
          'pp.randaugment.magnitude': 9,
          **overrides,
      }
  )


def _take(iterator, count):
  return [next(iterator) for _ in range(count)]


@pytest.mark.slow
def test_train_resumes_bitwise_and_processes_read_slices_of_one_global_batch(jpeg_data_dir):
  config = _config(jpeg_data_dir, **{'pp.mixup': 0.2})
  info = input_pipeline.get_dataset_info(config, 'train')
  assert info['num_examples'] == 48 and info['num_classes'] == 5
  run = _take(input_pipeline.get_data(config, 'train'), 8)  # 6 steps per epoch: crosses one
  assert run[0]['image'].shape == (8, 16, 16, 3) and run[0]['image'].dtype == np.float32
  assert np.abs(run[0]['image']).max() <= 1 + 1e-6
  np.testing.assert_allclose(run[0]['label'].sum(1), 1.0, atol=1e-6)  # mixup keeps the sums
  resumed = _take(input_pipeline.get_data(config, 'train', start_step=5), 3)
  for a, b in zip(run[5:], resumed):
    for key in a:
      np.testing.assert_array_equal(a[key], b[key])
  # One epoch holds every label exactly as often as the split (labels i % 5 of 48 records).
  plain = _config(jpeg_data_dir)
  epoch = _take(input_pipeline.get_data(plain, 'train'), 6)
  counts = sum(b['label'].sum(0) for b in epoch)
  np.testing.assert_array_equal(counts, np.bincount(np.arange(48) % 5))
  whole = next(input_pipeline.get_data(plain, 'train', start_step=7))
  halves = [
      next(input_pipeline.get_data(plain, 'train', start_step=7, process_index=i, process_count=2))
      for i in range(2)
  ]
  np.testing.assert_array_equal(np.concatenate([h['image'] for h in halves]), whole['image'])


def test_eval_counts_every_record_once_across_processes_and_split_slices(jpeg_data_dir):
  config = _config(jpeg_data_dir)
  per_process = [
      list(input_pipeline.get_data(config, 'eval', process_index=i, process_count=2))
      for i in range(2)
  ]
  assert len(per_process[0]) == len(per_process[1]) == 3  # ceil(20 / 8) batches each
  masks = sum(b['mask'].sum() for batches in per_process for b in batches)
  labels = sum(b['label'].sum(0) for batches in per_process for b in batches)
  assert masks == 20
  np.testing.assert_array_equal(labels, np.bincount(np.arange(20) % 5))  # record i: i % 5
  sliced = _config(jpeg_data_dir, **{'pp.test': 'train[:75%]'})
  assert input_pipeline.get_dataset_info(sliced, 'train[:75%]')['num_examples'] == 36
  assert sum(b['mask'].sum() for b in input_pipeline.get_data(sliced, 'eval')) == 36


def test_jpeg_window_decode_equals_decode_then_crop():
  pool = generated_jpegs.jpeg_pool(generated_jpegs.GeneratedJpegs.BUILDER_CONFIGS[1], seed=3)
  png = io.BytesIO()
  Image.open(io.BytesIO(pool[0])).save(png, format='PNG')
  for data in pool[:3] + [png.getvalue()]:
    for seed in range(4):
      seed_t = tf.constant([7, seed], tf.int64)
      for channels in (3, 1):
        fast = preprocessing.decode_inception_crop(tf.constant(data), channels, seed_t)
        slow = preprocessing.inception_crop(
            preprocessing.decode(tf.constant(data), channels), seed_t
        )
        assert fast.shape == slow.shape and fast.shape[-1] == channels
        # Chroma upsampling at the window's edges: a few values of its first and last column.
        differ = fast.numpy() != slow.numpy()
        assert np.abs(fast.numpy().astype(int) - slow.numpy()).max() <= 8
        assert differ.mean() < 0.01 and not differ[:, 1:-1].any()


def _same_batches(config, jpeg_data_dir):
  converted = next(input_pipeline.get_data(config, 'train', start_step=3))
  prepared = next(input_pipeline.get_data(_config(jpeg_data_dir), 'train', start_step=3))
  for key in prepared:
    np.testing.assert_array_equal(converted[key], prepared[key])


def test_small_tfrecord_dataset_is_converted_in_place(jpeg_data_dir, tmp_path):
  generated_jpegs.prepare('tiny', str(tmp_path), file_format='tfrecord')
  _same_batches(_config(str(tmp_path)), jpeg_data_dir)
  files = os.listdir(tmp_path / 'generated_jpegs' / 'tiny' / '1.0.0')
  assert 'generated_jpegs-train.array_record-00000-of-00001' in files
  assert 'generated_jpegs-train.tfrecord-00000-of-00001' in files  # left in place


@pytest.mark.slow
def test_large_tfrecord_dataset_is_a_clear_error_and_its_command_converts_it(
    jpeg_data_dir, tmp_path, monkeypatch
):
  monkeypatch.setattr(tfds_source, 'AUTO_CONVERT_BYTES', 0)  # as if it were ImageNet
  generated_jpegs.prepare('tiny', str(tmp_path), file_format='tfrecord')
  config = _config(str(tmp_path))
  with pytest.raises(errors.UserInputError) as error:
    input_pipeline.get_dataset_info(config, 'train')
  message = str(error.value)
  version_dir = os.path.join(str(tmp_path), 'generated_jpegs', 'tiny', '1.0.0')
  assert f"config.dataset='{TINY}' in {version_dir} is prepared as tfrecord" in message
  command = re.search(r'`(python -m vit_jax\.datasets\.to_array_record [^`]*)`', message)
  subprocess.run(
      [sys.executable] + command.group(1).split()[1:], check=True, capture_output=True, timeout=300
  )
  _same_batches(config, jpeg_data_dir)
