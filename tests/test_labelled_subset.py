"""config.pp.train_labelled_fraction: a fixed, class-balanced labelled subset of the train split."""

import ml_collections
import numpy as np
import pytest

from vit_jax import config_checks
from vit_jax import errors
from vit_jax import input_pipeline
from vit_jax.configs import pit as pit_configs
from vit_jax.datasets import device_input
from vit_jax.datasets import labelled_subset
from vit_jax.runtime import partitioning


def _config(**overrides):
  config = pit_configs.get_config('fashion_mnist')
  config.unlock()
  config.update_from_flattened_dict(overrides)
  return config


def test_subset_is_class_balanced_deterministic_and_nested():
  labels = np.random.default_rng(0).integers(0, 4, size=1000)
  small = labelled_subset.indices(labels, 4, 0.02, 'x')
  large = labelled_subset.indices(labels, 4, 0.2, 'x')
  assert len(small) == 4 * 5 and len(large) == 4 * 50
  np.testing.assert_array_equal(np.bincount(labels[large], minlength=4), [50] * 4)
  np.testing.assert_array_equal(small, labelled_subset.indices(labels, 4, 0.02, 'x'))
  assert np.all(np.diff(large) > 0) and set(small) <= set(large)
  # the first ones of each class in split order
  np.testing.assert_array_equal(large[labels[large] == 2], np.flatnonzero(labels == 2)[:50])


def test_subset_that_cannot_exist_is_one_clear_error():
  labels = np.array([0] * 90 + [1] * 10)
  with pytest.raises(errors.UserInputError, match=r'fewer than one example per class.*0\.02'):
    labelled_subset.indices(labels, 2, 0.01, 'x')
  with pytest.raises(errors.UserInputError, match=r'class 1 has only 10; lower it to at most 0\.2'):
    labelled_subset.indices(labels, 2, 0.5, 'x')


@pytest.mark.parametrize('value', [0.0, -0.1, 1.5])
def test_out_of_range_fraction_is_one_error_naming_the_field(value):
  config = _config(**{'pp.train_labelled_fraction': value})
  with pytest.raises(errors.UserInputError, match=f'pp.train_labelled_fraction={value}'):
    config_checks.validate(config, partitioning.create_mesh(config.mesh))


def test_pipelines_read_the_subset_and_reject_too_few(fashion_mnist_data_dir):
  config = _config(
      tfds_data_dir=fashion_mnist_data_dir, batch=60, **{'pp.train_labelled_fraction': 0.01}
  )
  assert input_pipeline.check_splits(config)['num_examples'] == 600
  chosen = input_pipeline.train_subset(config)
  # host pipeline: one epoch (10 batches of 60) holds every subset example once
  batches = input_pipeline.get_data(config, 'train')
  labels = np.concatenate([next(batches)['label'].argmax(-1) for _ in range(10)])
  np.testing.assert_array_equal(np.bincount(labels, minlength=10), [60] * 10)
  resumed = next(input_pipeline.get_data(config, 'train', start_step=3))
  again = input_pipeline.get_data(config, 'train')
  for _ in range(3):
    next(again)
  np.testing.assert_array_equal(resumed['image'], next(again)['image'])
  # on-device copy: the same 600 examples in the subset's order
  images, device_labels, _ = device_input.host_arrays(config)
  assert images.shape[0] == 600
  full_images, full_labels, _ = device_input.host_arrays(
      ml_collections.ConfigDict(dict(config, pp=dict(config.pp, train_labelled_fraction=1.0)))
  )
  np.testing.assert_array_equal(device_labels, full_labels[chosen])
  np.testing.assert_array_equal(images, full_images[chosen])
  # a fraction below one example per class stops the run at start (one fixture: ~15 s each)
  config.pp.train_labelled_fraction = 1e-5
  with pytest.raises(errors.UserInputError, match='raise it to at least 0.000167'):
    input_pipeline.check_splits(config)
