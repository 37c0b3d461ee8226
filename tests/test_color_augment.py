"""MoCo-v3 colour ops (vit_jax/datasets/color_augment.py) against numpy and colorsys, their
determinism per (seed, position), and the pipeline left bitwise as before at the defaults."""

import colorsys
import hashlib
import io

import numpy as np
from PIL import Image
from pipeline_configs import pipeline_config
import pytest
import tensorflow as tf

from vit_jax import input_pipeline
from vit_jax.datasets import color_augment as ca

LUMA = np.array([0.299, 0.587, 0.114])  # ITU-R BT.601, written out again on purpose
MOCO = {
    'pp.color_jitter.brightness': 0.4,
    'pp.color_jitter.contrast': 0.4,
    'pp.color_jitter.saturation': 0.4,
    'pp.color_jitter.hue': 0.1,
    'pp.color_jitter.prob': 0.8,
    'pp.grayscale_prob': 0.2,
    'pp.blur_prob': 0.5,
    'pp.solarize_prob': 0.2,
}


def _image(h=6, w=5, seed=0):
  return np.random.default_rng(seed).uniform(0, 255, (h, w, 3)).astype(np.float32)


def _np_brightness(x, f):
  return np.clip(f * x, 0, 255)


def _np_contrast(x, f):
  return np.clip(f * x + (1 - f) * (x @ LUMA).mean(), 0, 255)


def _np_saturation(x, f):
  return np.clip(f * x + (1 - f) * (x @ LUMA)[..., None], 0, 255)


def _np_hue(x, delta):
  out = np.empty_like(x)
  for i, j in np.ndindex(x.shape[:2]):
    h, s, v = colorsys.rgb_to_hsv(*(x[i, j] / 255))
    out[i, j] = np.array(colorsys.hsv_to_rgb((h + delta) % 1.0, s, v)) * 255
  return out


NP_OPS = {
    'brightness': _np_brightness,
    'contrast': _np_contrast,
    'saturation': _np_saturation,
    'hue': _np_hue,
}


@pytest.mark.parametrize(
    'name,value',
    [
        ('brightness', 1.3),
        ('brightness', 0.6),
        ('contrast', 0.6),
        ('contrast', 1.4),
        ('saturation', 0.0),
        ('saturation', 1.5),
        ('hue', 0.1),
        ('hue', -0.35),
    ],
)
def test_jitter_ops_match_numpy_and_colorsys(name, value):
  x = _image()
  out = ca.JITTER_OPS[name](tf.constant(x), tf.constant(value)).numpy()
  np.testing.assert_allclose(out, NP_OPS[name](x, value), atol=2e-3 if name == 'hue' else 1e-3)


def test_grayscale_and_solarize_match_numpy():
  x = _image()
  np.testing.assert_allclose(
      ca.grayscale(tf.constant(x)), np.repeat((x @ LUMA)[..., None], 3, -1), atol=1e-3
  )
  x[0, 0] = [127.99, 128.0, 128.01]  # the threshold: PIL inverts 128 and above
  np.testing.assert_array_equal(ca.solarize(tf.constant(x)), np.where(x >= 128, 255 - x, x))


def _np_blur(x, sigma, radius):
  """A direct 2-D convolution with the (2r+1)^2 Gaussian, edges mirrored."""
  t = np.arange(-radius, radius + 1)
  k = np.exp(-(t[:, None] ** 2 + t[None] ** 2) / (2 * sigma**2))
  k /= k.sum()
  p = np.pad(x, [(radius, radius), (radius, radius), (0, 0)], mode='symmetric')
  out = np.zeros_like(x)
  for i, j in np.ndindex(x.shape[:2]):
    out[i, j] = np.einsum('ab,abc->c', k, p[i : i + 2 * radius + 1, j : j + 2 * radius + 1])
  return out


@pytest.mark.parametrize('sigma,radius', [(0.7, 3), (1.9, 6)])
def test_gaussian_blur_matches_a_direct_convolution(sigma, radius):
  x = _image(9, 8)
  out = ca.gaussian_blur(tf.constant(x), tf.constant(sigma), radius).numpy()
  np.testing.assert_allclose(out, _np_blur(x, sigma, radius), atol=1e-3)
  flat = np.full((9, 8, 3), 77.0, np.float32)
  np.testing.assert_allclose(ca.gaussian_blur(tf.constant(flat), 1.0, 3), flat, atol=1e-4)


def test_color_jitter_is_the_numpy_ops_in_the_drawn_order():
  x = _image()
  strengths = dict(brightness=0.4, contrast=0.4, saturation=0.4, hue=0.1)
  orders = set()
  for s in range(12):
    seed = tf.constant([3, s], tf.int64)
    draws, order = ca.jitter_draws(seed, strengths)
    names = list(draws)
    expected = x
    for k in order.numpy():
      expected = NP_OPS[names[k]](expected, float(draws[names[k]]))
    out = ca.color_jitter(tf.constant(x), seed, **strengths).numpy()
    np.testing.assert_allclose(out, expected, atol=5e-3)
    orders.add(tuple(names[k] for k in order.numpy()))
    for name in ('brightness', 'contrast', 'saturation'):
      assert 0.6 <= float(draws[name]) <= 1.4
    assert -0.1 <= float(draws['hue']) <= 0.1
  assert len(orders) > 4  # the order really is random
  only = ca.color_jitter(tf.constant(x), tf.constant([3, 0], tf.int64), brightness=0.4)
  ratio = only.numpy()[x * 1.4 < 255] / x[x * 1.4 < 255]
  assert 0.6 <= ratio.min() and np.ptp(ratio) < 1e-5  # one factor for the whole image


def test_probabilities_are_the_share_of_images_changed():
  x = tf.constant(_image(4, 4))
  gray = [ca.augment(x, tf.constant([0, s], tf.int64), grayscale_prob=0.3) for s in range(300)]
  share = np.mean([np.ptp(g.numpy(), axis=-1).max() < 1e-3 for g in gray])
  assert 0.22 < share < 0.38
  np.testing.assert_array_equal(ca.augment(x, tf.constant([0, 1], tf.int64)), x)  # all off


def _preprocess(config, position, image=None):
  image = _image(20, 18, seed=position).astype(np.uint8) if image is None else image
  out = input_pipeline._preprocess(
      config, tf.constant(image), tf.constant(position, tf.int64), train=True
  )
  return out.numpy()


def test_same_seed_and_position_give_the_same_augmentation():
  config = pipeline_config(**MOCO, **{'pp.inception_crop': True})
  image = _image(20, 18).astype(np.uint8)
  first = [_preprocess(config, p, image) for p in range(6)]
  np.testing.assert_array_equal(first[2], _preprocess(config, 2, image))
  assert all(not np.array_equal(first[0], other) for other in first[1:])
  config.seed = 1
  assert not np.array_equal(first[2], _preprocess(config, 2, image))
  config.seed = 0  # as the pipeline runs it: traced in a tf.data map, the same every time
  ds = tf.data.Dataset.range(6).map(
      lambda p: input_pipeline._preprocess(config, tf.constant(image), p, train=True)
  )
  runs = [np.stack(list(ds.as_numpy_iterator())) for _ in range(2)]
  np.testing.assert_array_equal(runs[0], runs[1])
  np.testing.assert_allclose(runs[0], np.stack(first), atol=1e-5)


def _jpeg(array):
  buffer = io.BytesIO()
  Image.fromarray(array).save(buffer, 'JPEG', quality=90)
  return buffer.getvalue()


def _digest(config, train, encoded=False):
  digest = hashlib.sha256()
  rng = np.random.default_rng(0)
  for position in range(4):
    image = rng.integers(0, 256, (20, 18, 3), dtype=np.uint8)
    image, channels = (tf.constant(_jpeg(image)), 3) if encoded else (tf.constant(image), None)
    position = tf.constant(position, tf.int64)
    out = input_pipeline._preprocess(config, image, position, train, channels=channels)
    digest.update(np.asarray(out, np.float32).tobytes())
  return digest.hexdigest()[:16]


_OLD_OPS = {
    'pp.inception_crop': True,
    'pp.pad_crop': 2,
    'pp.randaugment.num_layers': 2,
    'pp.randaugment.magnitude': 9,
}


def test_defaults_leave_the_pipeline_bitwise_as_before():
  # Recorded from main at d478e53 (before these ops and pp.inception_crop_area existed) with
  # TensorFlow 2.21 on x86-64; every new field here is at its default.
  assert _digest(pipeline_config(), True) == '84eefc12dcb9e0d0'
  assert _digest(pipeline_config(**_OLD_OPS), True) == 'cdb0c2006f7c6b2c'
  assert _digest(pipeline_config(**_OLD_OPS), True, encoded=True) == 'c79152118a48027f'
  assert _digest(pipeline_config(**{'pp.resize': 16}), False) == '684b31c1a16a1fba'


def test_crop_area_range_is_read():
  image = (np.arange(20 * 20 * 3).reshape(20, 20, 3) % 256).astype(np.uint8)
  plain = pipeline_config(**{'pp.crop': 20})
  whole = pipeline_config(
      **{'pp.crop': 20, 'pp.inception_crop': True, 'pp.inception_crop_area': (1.0, 1.0)}
  )
  some = pipeline_config(**{'pp.crop': 20, 'pp.inception_crop': True})
  for position in range(3):  # a crop of all the area is the image itself
    np.testing.assert_array_equal(
        _preprocess(whole, position, image), _preprocess(plain, position, image)
    )
  assert not np.array_equal(_preprocess(some, 0, image), _preprocess(plain, 0, image))
