"""config.pp.on_device: batches gathered in the step equal the host pipeline's preprocessing,
cover each example once per epoch, and are the same on any mesh."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests import pipeline_configs
from vit_jax import errors
from vit_jax import input_pipeline
from vit_jax.datasets import device_input
from vit_jax.runtime import partitioning


@pytest.mark.parametrize('n', [1, 2, 7, 1000, 60_000, 65_537])
def test_index_shuffle_is_a_permutation(n):
  for epoch in (0, 5):
    keys = device_input._epoch_keys(0, epoch)
    out = np.asarray(jax.jit(lambda i, k=keys: device_input.index_shuffle(i, k, n))(jnp.arange(n)))
    np.testing.assert_array_equal(np.sort(out), np.arange(n))
    if n >= 1000:  # a shuffle, not the identity
      assert np.mean(out == np.arange(n)) < 0.01


def _config(data_dir, **overrides):
  # 600 train images, batch 64: batches 9, 18 cross the first two epoch boundaries.
  return pipeline_configs.pipeline_config(
      tfds_data_dir=data_dir,
      batch=64,
      batch_eval=600,
      **{'pp.train': 'train[:1%]', 'pp.test': 'train[:1%]', 'pp.on_device': True},
      **overrides,
  )


@pytest.mark.slow
def test_batches_are_the_host_preprocessing_shuffled_and_flipped(fashion_mnist_data_dir):
  config = _config(fashion_mnist_data_dir)
  # The host pipeline's eval batches: the same split, same resize and channels, in order.
  reference = next(input_pipeline.get_data(config, 'eval', process_index=0, process_count=1))
  assert reference['mask'].sum() == 600
  mesh = partitioning.create_mesh({'data': -1})  # 8 simulated devices
  data, num_classes = device_input.load(config, mesh)
  n = data.labels.shape[0]
  assert n == 600 and num_classes == 10

  @jax.jit
  def sharded(step):
    return device_input.batch_at(config, data, step, num_classes, mesh)

  unsharded = jax.jit(lambda step: device_input.batch_at(config, data, step, num_classes))
  steps = 20  # 1,280 positions: two epochs and a bit
  with jax.set_mesh(mesh):
    batches = [sharded(jnp.asarray(s)) for s in range(steps)]
    # Every device walks the whole batch's indices itself: no collective in the step.
    assert 'all-reduce' not in sharded.lower(jnp.asarray(0)).compile().as_text()
  indices = np.concatenate(
      [np.asarray(device_input.indices_at(config.seed, s * 64, 64, n)[0]) for s in range(steps)]
  )
  for epoch in range(2):  # every example exactly once per epoch, in a new order each time
    np.testing.assert_array_equal(np.sort(indices[epoch * n : (epoch + 1) * n]), np.arange(n))
  assert not np.array_equal(indices[:n], indices[n : 2 * n])
  flipped = 0
  for s, batch in enumerate(batches):
    idx = indices[s * 64 : (s + 1) * 64]
    assert {x.data.shape[0] for x in batch['image'].addressable_shards} == {8}  # 8 devices
    np.testing.assert_array_equal(batch['label'], reference['label'][idx])
    image, ref = np.asarray(batch['image']), reference['image'][idx]
    same = np.all(np.isclose(image, ref, atol=1e-6), axis=(1, 2, 3))
    mirrored = np.all(np.isclose(image, ref[:, :, ::-1], atol=1e-6), axis=(1, 2, 3))
    assert np.all(same | mirrored)
    flipped += int(np.sum(mirrored & ~same))
    jax.tree.map(np.testing.assert_array_equal, batch, unsharded(jnp.asarray(s)))
  assert 0.35 < flipped / (steps * 64) < 0.65


def test_options_it_cannot_do_are_one_clear_error(fashion_mnist_data_dir):
  for field, value in [
      ('pp.inception_crop', True),
      ('pp.pad_crop', 2),
      ('pp.mixup', 0.2),
      ('pp.randaugment.num_layers', 2),
      ('pp.color_jitter.hue', 0.1),
      ('pp.grayscale_prob', 0.2),
      ('pp.blur_prob', 0.5),
      ('pp.solarize_prob', 0.2),
  ]:
    with pytest.raises(errors.UserInputError, match=f'config.{field}=.*pp.on_device'):
      device_input.check(_config(fashion_mnist_data_dir, **{field: value}))
  device_input.check(_config(fashion_mnist_data_dir))  # flip alone is fine
