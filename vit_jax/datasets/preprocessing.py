"""Image preprocessing in TensorFlow, driven by stateless seeds.

Every random choice takes an explicit `seed` (a [2] int tensor) derived from the run's seed
and the example's global position, so a restarted run augments each example exactly as an
uninterrupted one would.
"""

import tensorflow as tf


def to_float(image):
  """uint8 [0, 255] -> float32 [-1, 1], as the original."""
  return (tf.cast(image, tf.float32) - 127.5) / 127.5


def ensure_channels(image, channels):
  if channels == 3 and image.shape[-1] == 1:
    return tf.image.grayscale_to_rgb(image)
  if channels == 1 and image.shape[-1] == 3:
    return tf.image.rgb_to_grayscale(image)
  return image


AREA_RANGE = (0.05, 1.0)  # the original's inception crop; MoCo v3 (and PiT) use (0.2, 1)


def _inception_box(shape, seed, area_range):
  """(begin, size) of a random crop of `area_range` of the area, aspect ratio 3/4 to 4/3."""
  begin, size, _ = tf.image.stateless_sample_distorted_bounding_box(
      shape,
      tf.zeros([0, 0, 4], tf.float32),
      seed=seed,
      area_range=area_range,
      aspect_ratio_range=(3 / 4, 4 / 3),
      min_object_covered=0,
      use_image_if_no_bounding_boxes=True,
  )
  return begin, size


def inception_crop(image, seed, area_range=AREA_RANGE):
  """Random crop of a share of the area in `area_range` (the original: 5-100 %), aspect ratio
  3/4 to 4/3."""
  begin, size = _inception_box(tf.shape(image), seed, area_range)
  channels = image.shape[-1]
  image = tf.slice(image, begin, size)
  image.set_shape([None, None, channels])
  return image


def decode(data, channels):
  """Encoded JPEG/PNG/GIF/BMP bytes -> uint8 [h, w, channels]."""
  return tf.io.decode_image(data, channels=channels, expand_animations=False)


def decode_inception_crop(data, channels, seed, area_range=AREA_RANGE):
  """`inception_crop(decode(data, channels), seed, area_range)`, but a JPEG decodes only the
  crop window (read from its header): the same pixels for a fraction of the decode time."""

  def jpeg_window():
    shape = tf.io.extract_jpeg_shape(data)
    shape = tf.concat([shape[:2], [channels]], 0)
    begin, size = _inception_box(shape, seed, area_range)
    window = tf.stack([begin[0], begin[1], size[0], size[1]])
    return tf.io.decode_and_crop_jpeg(data, window, channels=channels)

  def other():
    return inception_crop(decode(data, channels), seed, area_range)

  image = tf.cond(tf.io.is_jpeg(data), jpeg_window, other)
  image.set_shape([None, None, channels])
  return image


def resize(image, size):
  """Bilinear (antialiased) float32 resize to size x size; an image already that size is only
  cast (the resize would copy it unchanged at a real cost per example)."""
  if tuple(image.shape[:2]) == (size, size):
    return tf.cast(image, tf.float32)
  return tf.image.resize(image, [size, size], method='bilinear', antialias=True)


def resize_small_central_crop(image, resize_to, crop):
  """Resizes the shorter side to `resize_to`, then takes the central crop x crop."""
  shape = tf.cast(tf.shape(image)[:2], tf.float32)
  scale = resize_to / tf.reduce_min(shape)
  new_shape = tf.cast(tf.round(shape * scale), tf.int32)
  image = tf.image.resize(image, new_shape, method='bilinear', antialias=True)
  top = (new_shape[0] - crop) // 2
  left = (new_shape[1] - crop) // 2
  return image[top : top + crop, left : left + crop]


def pad_random_crop(image, pad, seed):
  """Zero-pads `pad` pixels on each side, then crops back to the size at a random offset.

  A random translation by up to `pad` pixels (the classic CIFAR/Fashion-MNIST augmentation);
  zero is black in the [0, 255] range this runs in.
  """
  shape = tf.shape(image)
  padded = tf.pad(image, [[pad, pad], [pad, pad], [0, 0]])
  return tf.image.stateless_random_crop(padded, shape, seed)


def random_flip(image, seed):
  return tf.image.stateless_random_flip_left_right(image, seed)


# ------------------------------------------------------------------------------- RandAugment
def _blend(a, b, factor):
  return tf.clip_by_value(b + factor * (a - b), 0.0, 255.0)


def _affine(image, transform):
  """Applies a projective transform [a0 a1 a2 b0 b1 b2 0 0] with edge-value fill."""
  return tf.raw_ops.ImageProjectiveTransformV3(
      images=image[None],
      transforms=tf.cast(transform, tf.float32)[None],
      output_shape=tf.shape(image)[:2],
      interpolation='BILINEAR',
      fill_mode='NEAREST',
      fill_value=0.0,
  )[0]


def _ops(image, level, sign):
  """RandAugment's ops on a float [0, 255] image; `level` in [0, 1], `sign` in {-1, 1}."""
  h = tf.cast(tf.shape(image)[0], tf.float32)
  w = tf.cast(tf.shape(image)[1], tf.float32)
  gray = tf.reduce_mean(image, axis=-1, keepdims=True)
  lo = tf.reduce_min(image, axis=[0, 1], keepdims=True)
  hi = tf.reduce_max(image, axis=[0, 1], keepdims=True)
  angle = sign * level * 30.0 * 3.14159265 / 180.0
  cos, sin = tf.cos(angle), tf.sin(angle)
  cx, cy = (w - 1) / 2, (h - 1) / 2
  shear = sign * level * 0.3
  shift = sign * level * 0.3
  bits = tf.cast(8 - tf.round(level * 4), tf.int32)
  return [
      lambda: image,  # identity
      lambda: (image - lo) / tf.maximum(hi - lo, 1.0) * 255.0,  # autocontrast
      lambda: _blend(image, tf.zeros_like(image), 1.0 + sign * level * 0.9),  # brightness
      lambda: _blend(
          image, tf.reduce_mean(gray) * tf.ones_like(image), 1.0 + sign * level * 0.9
      ),  # contrast
      lambda: _blend(image, gray * tf.ones_like(image), 1.0 + sign * level * 0.9),  # color
      lambda: tf.where(image < 256.0 - level * 256.0, image, 255.0 - image),  # solarize
      lambda: tf.cast(
          tf.bitwise.left_shift(
              tf.bitwise.right_shift(tf.cast(image, tf.int32), 8 - bits), 8 - bits
          ),
          tf.float32,
      ),  # posterize
      lambda: _affine(
          image, [cos, -sin, cx - cos * cx + sin * cy, sin, cos, cy - sin * cx - cos * cy, 0.0, 0.0]
      ),  # rotate
      lambda: _affine(image, [1.0, shear, -shear * cy, 0.0, 1.0, 0.0, 0.0, 0.0]),  # shear x
      lambda: _affine(image, [1.0, 0.0, 0.0, shear, 1.0, -shear * cx, 0.0, 0.0]),  # shear y
      lambda: _affine(image, [1.0, 0.0, shift * w, 0.0, 1.0, 0.0, 0.0, 0.0]),  # translate x
      lambda: _affine(image, [1.0, 0.0, 0.0, 0.0, 1.0, shift * h, 0.0, 0.0]),  # translate y
  ]


NUM_RANDAUGMENT_OPS = 12


def randaugment(image, seed, num_layers=2, magnitude=10):
  """Applies `num_layers` random ops at `magnitude` (0-10) to a uint8-range float image."""
  level = min(max(magnitude, 0), 10) / 10.0
  for layer in range(num_layers):
    op_seed = tf.random.experimental.stateless_fold_in(seed, layer)
    index = tf.random.stateless_uniform([], op_seed, 0, NUM_RANDAUGMENT_OPS, tf.int32)
    sign = tf.where(tf.random.stateless_uniform([], op_seed + 1) < 0.5, -1.0, 1.0)
    image = tf.switch_case(index, _ops(image, level, sign))
    image = tf.clip_by_value(tf.ensure_shape(image, [None, None, image.shape[-1]]), 0.0, 255.0)
  return image


# -------------------------------------------------------------------------------------- mixup
def mixup(batch, seed, alpha):
  """Mixes each example with the batch reversed, weight ~ Beta(alpha, alpha) per batch."""
  a = tf.random.stateless_gamma([], seed, alpha)
  b = tf.random.stateless_gamma([], seed + 1, alpha)
  lam = a / (a + b)
  mix = lambda x: lam * x + (1.0 - lam) * tf.reverse(x, axis=[0])
  return dict(batch, image=mix(batch['image']), label=mix(batch['label']))
