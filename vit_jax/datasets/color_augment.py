"""MoCo-v3-style photometric augmentation in TensorFlow, driven by stateless seeds.

Colour jitter, random grayscale, Gaussian blur and solarization, as in the MoCo v3 recipe
the PiT paper trains with. Images are float [h, w, c] in the [0, 255] range the rest of the
train preprocessing runs in; every op clips back into it. Every random choice draws from a
stream folded into the example's `seed` (run seed, global position), so a resumed run
augments each example exactly as an uninterrupted one would.
"""

import math

import tensorflow as tf

# ITU-R BT.601 luma weights: the grayscale of torchvision and PIL ('L' mode).
LUMA = (0.299, 0.587, 0.114)

# Streams folded into the example's seed, one per op (distinct from the other ops' seeds).
_JITTER, _GRAYSCALE, _BLUR, _SOLARIZE = 11, 12, 13, 14


def _stream(seed, stream):
  return tf.random.experimental.stateless_fold_in(seed, stream)


def _coin(seed, prob):
  """True with probability `prob`."""
  return tf.random.stateless_uniform([], seed) < prob


def luma(image):
  """[h, w, 1] luma of an RGB image; a 1-channel image is its own luma."""
  if image.shape[-1] == 1:
    return image
  return tf.tensordot(image, tf.constant(LUMA, image.dtype), axes=[[-1], [0]])[..., None]


def _mix(image, other, factor):
  """factor * image + (1 - factor) * other, clipped: factor 1 returns `image` exactly."""
  return tf.clip_by_value(factor * image + (1.0 - factor) * other, 0.0, 255.0)


def adjust_brightness(image, factor):
  """Scales the pixels by `factor` (torchvision's brightness; tf.image's adds instead)."""
  return _mix(image, tf.zeros_like(image), factor)


def adjust_contrast(image, factor):
  """Blends with the mean luma of the whole image (tf.image's uses each channel's mean)."""
  return _mix(image, tf.reduce_mean(luma(image)), factor)


def adjust_saturation(image, factor):
  """Blends each pixel with its own luma: 0 is grayscale, 1 the image."""
  return _mix(image, luma(image), factor)


def adjust_hue(image, delta):
  """Rotates the hue by `delta` turns of the colour circle (HSV), in [-0.5, 0.5]."""
  return tf.clip_by_value(tf.image.adjust_hue(image / 255.0, delta) * 255.0, 0.0, 255.0)


def grayscale(image):
  """The luma in every channel (the channel count stays)."""
  return tf.broadcast_to(luma(image), tf.shape(image))


def solarize(image, threshold=128.0):
  """Inverts the pixels at or above `threshold`, as PIL's ImageOps.solarize."""
  return tf.where(image >= threshold, 255.0 - image, image)


def _gaussian_kernel(sigma, radius):
  x = tf.range(-radius, radius + 1, dtype=tf.float32)
  weights = tf.exp(-(x**2) / (2.0 * sigma**2))
  return weights / tf.reduce_sum(weights)


def gaussian_blur(image, sigma, radius):
  """Separable Gaussian blur of standard deviation `sigma` with a (2 radius + 1)-tap kernel;
  the border is mirrored (edge pixel repeated), so a flat image stays flat."""
  channels = image.shape[-1]
  sides = [d for d in image.shape[:2] if d is not None]
  radius = min([radius] + sides)  # 'SYMMETRIC' padding reaches at most one side's length
  kernel = _gaussian_kernel(sigma, radius)
  padded = tf.pad(image, [[radius, radius], [radius, radius], [0, 0]], mode='SYMMETRIC')
  rows = tf.tile(tf.reshape(kernel, [-1, 1, 1, 1]), [1, 1, channels, 1])
  cols = tf.tile(tf.reshape(kernel, [1, -1, 1, 1]), [1, 1, channels, 1])
  out = tf.nn.depthwise_conv2d(padded[None], rows, [1, 1, 1, 1], 'VALID')
  out = tf.nn.depthwise_conv2d(out, cols, [1, 1, 1, 1], 'VALID')
  return tf.clip_by_value(out[0], 0.0, 255.0)


JITTER_OPS = {
    'brightness': adjust_brightness,
    'contrast': adjust_contrast,
    'saturation': adjust_saturation,
    'hue': adjust_hue,
}


def jitter_draws(seed, strengths):
  """The random part of one `color_jitter`: ({op: its factor or hue shift}, order of the
  ops) for the ops of nonzero strength. Factors are uniform in [max(0, 1 - s), 1 + s] and
  the hue shift in [-s, s], as torchvision's ColorJitter draws them."""
  draws = {}
  for stream, (name, strength) in enumerate(strengths.items()):
    if not strength:
      continue
    lo, hi = (-strength, strength) if name == 'hue' else (max(0.0, 1.0 - strength), 1 + strength)
    draws[name] = tf.random.stateless_uniform([], _stream(seed, stream), lo, hi)
  order = tf.argsort(tf.random.stateless_uniform([len(draws)], _stream(seed, len(strengths))))
  return draws, order


def color_jitter(image, seed, brightness=0.0, contrast=0.0, saturation=0.0, hue=0.0):
  """torchvision-style ColorJitter: brightness, contrast, saturation and hue in a random
  order (a fresh permutation per image, as torchvision); a strength of 0 leaves its op out."""
  strengths = dict(brightness=brightness, contrast=contrast, saturation=saturation, hue=hue)
  draws, order = jitter_draws(seed, strengths)
  ops = [lambda x, name=name: JITTER_OPS[name](x, draws[name]) for name in draws]
  if len(ops) < 2:
    return ops[0](image) if ops else image
  shape = image.shape
  for slot in range(len(ops)):
    branches = [lambda op=op, x=image: op(x) for op in ops]
    image = tf.ensure_shape(tf.switch_case(order[slot], branches), shape)
  return image


def _maybe(image, seed, prob, op):
  """`op(image)` with probability `prob`; `prob` 0 adds nothing to the graph."""
  if prob <= 0:
    return image
  if prob >= 1:
    return op(image)
  return tf.cond(_coin(seed, prob), lambda: op(image), lambda: image)


def augment(
    image,
    seed,
    *,
    jitter=(0.0, 0.0, 0.0, 0.0),
    jitter_prob=1.0,
    grayscale_prob=0.0,
    blur_prob=0.0,
    blur_sigma=(0.1, 2.0),
    solarize_prob=0.0,
):
  """MoCo v3's photometric ops in its order: colour jitter (`jitter` = brightness, contrast,
  saturation, hue) with probability `jitter_prob`, grayscale, Gaussian blur (sigma uniform
  in `blur_sigma`), solarization, each with its own probability. All off by default."""
  if any(jitter):
    image = _maybe(
        image,
        _stream(seed, _JITTER),
        jitter_prob,
        lambda x: color_jitter(x, _stream(_stream(seed, _JITTER), 1), *jitter),
    )
  image = _maybe(image, _stream(seed, _GRAYSCALE), grayscale_prob, grayscale)

  def blur(x):
    lo, hi = blur_sigma
    sigma = tf.random.stateless_uniform([], _stream(_stream(seed, _BLUR), 1), lo, hi)
    return gaussian_blur(x, sigma, radius=math.ceil(3 * hi))

  image = _maybe(image, _stream(seed, _BLUR), blur_prob, blur)
  return _maybe(image, _stream(seed, _SOLARIZE), solarize_prob, solarize)
