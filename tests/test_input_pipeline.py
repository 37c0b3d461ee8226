"""Input pipeline: real offline Fashion-MNIST, folders, order, resume, eval (TFDS JPEGs from
array_record: test_tfds_source.py)."""

import gzip
import os
import time

import ml_collections
import numpy as np
from PIL import Image
from pipeline_configs import FASHION_MNIST_DIR
from pipeline_configs import pipeline_config
import pytest
import tensorflow_datasets as tfds

from vit_jax import errors
from vit_jax import input_pipeline
from vit_jax.datasets import preprocessing

FMNIST = FASHION_MNIST_DIR


_config = pipeline_config


def _idx(name, header):
  with gzip.open(os.path.join(FMNIST, name)) as f:
    return np.frombuffer(f.read(), np.uint8)[header:]


def test_offline_fashion_mnist_is_the_real_data(fashion_mnist_data_dir):
  builder = tfds.builder('fashion_mnist', data_dir=fashion_mnist_data_dir)
  assert builder.is_prepared()
  assert builder.info.splits['train'].num_examples == 60_000
  test = builder.as_data_source(split='test')  # array_record, read by index
  images = _idx('t10k-images-idx3-ubyte.gz', 16).reshape(-1, 28, 28)
  labels = _idx('t10k-labels-idx1-ubyte.gz', 8)
  from_tfds = sorted(
      (test[i]['image'][..., 0].tobytes(), int(test[i]['label'])) for i in range(len(test))
  )
  assert np.bincount([label for _, label in from_tfds]).tolist() == [1000] * 10
  # Same (image, label) pairs as the idx files, whatever the order TFDS wrote them in.
  from_idx = sorted((img.tobytes(), int(lab)) for img, lab in zip(images, labels))
  assert from_idx == from_tfds


def test_train_batches_are_deterministic_resumable_and_rgb(fashion_mnist_data_dir):
  config = _config(tfds_data_dir=fashion_mnist_data_dir)
  run = input_pipeline.get_data(config, 'train')
  batches = [next(run) for _ in range(4)]
  assert batches[0]['image'].shape == (32, 14, 14, 3)  # grayscale -> RGB for the model
  assert batches[0]['image'].min() >= -1 and batches[0]['image'].max() <= 1
  np.testing.assert_array_equal(batches[0]['label'].sum(1), 1.0)
  again = next(input_pipeline.get_data(config, 'train'))
  np.testing.assert_array_equal(again['image'], batches[0]['image'])
  resumed = next(input_pipeline.get_data(config, 'train', start_step=3))
  np.testing.assert_array_equal(resumed['image'], batches[3]['image'])
  other = next(
      input_pipeline.get_data(_config(tfds_data_dir=fashion_mnist_data_dir, seed=1), 'train')
  )
  assert not np.array_equal(other['image'], batches[0]['image'])
  # Two processes see the two halves of the same global batch.
  halves = [
      next(input_pipeline.get_data(config, 'train', start_step=3, process_index=i, process_count=2))
      for i in range(2)
  ]
  np.testing.assert_array_equal(np.concatenate([h['image'] for h in halves]), batches[3]['image'])


def test_eval_counts_every_example_once_across_processes(fashion_mnist_data_dir):
  config = _config(tfds_data_dir=fashion_mnist_data_dir, batch_eval=96)
  per_process = []
  for i in range(3):
    batches = list(input_pipeline.get_data(config, 'eval', process_index=i, process_count=3))
    per_process.append(batches)
  assert len({len(b) for b in per_process}) == 1  # equal batch counts on every process
  total = sum(b['mask'].sum() for batches in per_process for b in batches)
  assert total == 10_000
  labels = sum(b['label'].sum(0) for batches in per_process for b in batches)
  np.testing.assert_array_equal(labels, [1000] * 10)


def test_image_folder(tmp_path):
  rng = np.random.default_rng(0)
  for split, count in (('train', 3), ('test', 2)):
    for name in ('cat', 'dog'):
      os.makedirs(tmp_path / split / name)
      for i in range(count):
        Image.fromarray(rng.integers(0, 255, (20, 24, 3), np.uint8)).save(
            tmp_path / split / name / f'{i}.png'
        )
  config = _config(dataset=str(tmp_path), batch=4, batch_eval=3)
  info = input_pipeline.get_dataset_info(config, 'train')
  assert info['num_classes'] == 2 and info['class_names'] == ['cat', 'dog']
  assert next(input_pipeline.get_data(config, 'train'))['image'].shape == (4, 14, 14, 3)
  evals = list(input_pipeline.get_data(config, 'eval'))
  assert sum(b['mask'].sum() for b in evals) == 4


def _folder(root, classes, counts=(('train', 3), ('test', 2))):
  rng = np.random.default_rng(0)
  for split, count in counts:
    for name in classes.get(split, ()) if isinstance(classes, dict) else classes:
      os.makedirs(root / split / name)
      for i in range(count):
        Image.fromarray(rng.integers(0, 255, (20, 24, 3), np.uint8)).save(
            root / split / name / f'{i}.png'
        )
  return ml_collections.ConfigDict(_config(dataset=str(root), batch=6, batch_eval=4))


def test_image_folder_layout_errors_at_setup(tmp_path):
  config = _folder(tmp_path / 'a', {'train': ('cat', 'dog'), 'test': ('bird', 'cat')})
  with pytest.raises(errors.UserInputError) as error:
    input_pipeline.get_dataset_info(config, 'train')
  message = str(error.value)
  assert "only in train: ['dog']" in message and "only in test: ['bird']" in message
  assert str(tmp_path / 'a' / 'train') in message and str(tmp_path / 'a' / 'test') in message
  config = _folder(tmp_path / 'b', ('cat', 'dog'))
  os.makedirs(tmp_path / 'b' / 'test' / 'eel')
  os.makedirs(tmp_path / 'b' / 'train' / 'eel')
  (tmp_path / 'b' / 'train' / 'eel' / 'notes.txt').write_text('not an image')
  with pytest.raises(
      errors.UserInputError, match=f'class folder {tmp_path / "b" / "train" / "eel"} has no'
  ):
    input_pipeline.get_dataset_info(config, 'train')
  config = _folder(tmp_path / 'c', ())
  os.makedirs(tmp_path / 'c' / 'train')
  os.makedirs(tmp_path / 'c' / 'test')
  with pytest.raises(errors.UserInputError, match='has no class folders'):
    input_pipeline.get_dataset_info(config, 'train')
  with pytest.raises(errors.MissingInputError, match="no 'validation' subfolder"):
    input_pipeline.get_dataset_info(
        _config(dataset=str(tmp_path / 'b'), **{'pp.test': 'validation'}), 'train'
    )


def _corrupt_folder(root):
  """2 classes x 3 train images, one of them garbage bytes; batch 6 = the whole split."""
  config = _folder(root, ('cat', 'dog'))
  bad = root / 'train' / 'dog' / '1.png'
  bad.write_bytes(b'this is not a png' * 10)
  return config, str(bad)


def test_undecodable_image_is_an_error_naming_the_file_and_step(tmp_path):
  config, bad = _corrupt_folder(tmp_path)
  batches = input_pipeline.get_data(config, 'train', start_step=4)
  with pytest.raises(errors.UserInputError) as error:
    next(batches)
  message = str(error.value)
  assert bad in message and 'example 4' in message and 'train step 5' in message, message
  assert 'config.pp.skip_undecodable=True' in message
  (tmp_path / 'test' / 'cat' / '0.png').write_bytes(b'garbage')
  with pytest.raises(errors.UserInputError, match='eval batch 0.*test/cat/0.png'):
    list(input_pipeline.get_data(config, 'eval'))


def test_skip_undecodable_gives_weight_0_and_stays_resumable(tmp_path, caplog):
  config, bad = _corrupt_folder(tmp_path)
  config.pp.skip_undecodable = True
  run = input_pipeline.get_data(config, 'train')
  batches = [next(run) for _ in range(3)]
  assert run.skipped == 3 and bad in caplog.text and 'train step 3' in caplog.text
  for batch in batches:  # each batch holds the whole split, so the bad image once
    assert batch['weight'].tolist().count(0.0) == 1 and batch['weight'].sum() == 5
    skipped = batch['weight'] == 0
    assert not batch['image'][skipped].any() and not batch['label'][skipped].any()
    np.testing.assert_array_equal(batch['label'][~skipped].sum(1), 1.0)
  assert not all(np.array_equal(batches[0]['weight'], b['weight']) for b in batches[1:])
  resumed = next(input_pipeline.get_data(config, 'train', start_step=2))
  for key in ('image', 'label', 'weight'):
    np.testing.assert_array_equal(resumed[key], batches[2][key])
  evals = list(input_pipeline.get_data(config, 'eval'))
  assert sum(b['mask'].sum() for b in evals) == 4  # the test split has no bad file
  (tmp_path / 'test' / 'dog' / '1.png').write_bytes(b'garbage')
  evals = input_pipeline.get_data(config, 'eval')
  assert sum(b['mask'].sum() for b in evals) == 3 and evals.skipped == 1


def test_clear_errors_in_seconds(tmp_path):
  """Offline downloads (config.tfds_download=True): tests/test_tfds_download.py."""
  with pytest.raises(ValueError, match="config.dataset='no_such_set'"):
    input_pipeline.get_dataset_info(_config(dataset='no_such_set'), 'train')
  start = time.time()
  with pytest.raises(ValueError, match='not prepared.*download_and_prepare'):
    input_pipeline.get_dataset_info(
        _config(dataset='cifar10', tfds_data_dir=str(tmp_path), tfds_download=False), 'train'
    )
  assert time.time() - start < 20
  with pytest.raises(ValueError, match='config.batch=32 is not divisible'):
    input_pipeline.get_data(
        _config(dataset=str(tmp_path)), 'train', process_count=3, process_index=0
    )


def test_preprocessing_ops_shapes_and_ranges():
  import tensorflow as tf

  image = tf.constant(np.random.default_rng(0).integers(0, 255, (40, 30, 3)), tf.float32)
  seed = tf.constant([1, 2], tf.int64)
  assert preprocessing.resize_small_central_crop(image, 24, 20).shape == (20, 20, 3)
  assert preprocessing.inception_crop(image, seed).shape[-1] == 3
  for i in range(preprocessing.NUM_RANDAUGMENT_OPS):
    out = preprocessing.randaugment(image, tf.constant([i, 5], tf.int64), 3, 10)
    assert out.shape == (40, 30, 3)
    assert float(tf.reduce_min(out)) >= 0 and float(tf.reduce_max(out)) <= 255
  same = [preprocessing.randaugment(image, seed, 2, 9) for _ in range(2)]
  np.testing.assert_array_equal(same[0], same[1])


def test_resize_to_the_same_size_skips_the_resize_without_changing_values():
  import tensorflow as tf

  image = tf.constant(np.random.default_rng(1).integers(0, 255, (28, 28, 1)), tf.float32)
  full = tf.image.resize(image, [28, 28], method='bilinear', antialias=True)
  np.testing.assert_array_equal(preprocessing.resize(image, 28), full)
  assert preprocessing.resize(image, 28) is image
  assert preprocessing.resize(image, 14).shape == (14, 14, 1)
  as_uint8 = preprocessing.resize(tf.cast(image, tf.uint8), 28)
  assert as_uint8.dtype == tf.image.resize(tf.cast(image, tf.uint8), [28, 28]).dtype


def test_pad_random_crop_is_a_seeded_translation_with_black_fill():
  import tensorflow as tf

  image = np.random.default_rng(1).integers(1, 255, (12, 10, 1)).astype(np.float32)
  padded = np.pad(image, [(3, 3), (3, 3), (0, 0)])
  offsets = set()
  for s in range(40):
    seed = tf.constant([7, s], tf.int64)
    out = preprocessing.pad_random_crop(tf.constant(image), 3, seed).numpy()
    np.testing.assert_array_equal(out, preprocessing.pad_random_crop(image, 3, seed))
    matches = [
        (dy, dx)
        for dy in range(7)
        for dx in range(7)
        if np.array_equal(out, padded[dy : dy + 12, dx : dx + 10])
    ]
    assert len(matches) == 1, s  # exactly one window of the zero-padded image
    offsets.add(matches[0])
  assert len(offsets) > 10  # the offset really varies with the seed
