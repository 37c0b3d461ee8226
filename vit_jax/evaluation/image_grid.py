"""Images in [-1, 1] as one PNG grid (a row per class), written through the path layer."""

import io

import numpy as np
from PIL import Image

from vit_jax import paths


def to_uint8(images):
  """[n, h, w, c] in [-1, 1] -> uint8 [n, h, w, c] (values outside are clipped)."""
  images = np.asarray(images, np.float32)
  return np.clip(np.round((images + 1) * 127.5), 0, 255).astype(np.uint8)


def grid(images, rows, pad=1):
  """uint8 [rows * h + pad, cols * w + pad, c] of images [n, h, w, c], row-major."""
  images = to_uint8(images)
  n, h, w, c = images.shape
  cols = -(-n // rows)
  out = np.full((rows * (h + pad) + pad, cols * (w + pad) + pad, c), 255, np.uint8)
  for i, image in enumerate(images):
    r, q = divmod(i, cols)
    out[
        pad + r * (h + pad) : pad + r * (h + pad) + h, pad + q * (w + pad) : pad + q * (w + pad) + w
    ] = image
  return out


def write_png(path, images, rows, scale=1):
  """Writes the grid of `images` to `path` (local or gs://), each pixel scale x scale."""
  picture = grid(images, rows)
  if scale > 1:
    picture = picture.repeat(scale, 0).repeat(scale, 1)
  mode = 'L' if picture.shape[-1] == 1 else 'RGB'
  buffer = io.BytesIO()
  Image.fromarray(picture[..., 0] if mode == 'L' else picture, mode).save(buffer, 'PNG')
  paths.write_bytes(path, buffer.getvalue())
  return path
