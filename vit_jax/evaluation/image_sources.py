"""Images and statistics to evaluate, read through the path layer and checked before any
compile: ADM's `.npz` batches (`arr_0` uint8 [n, h, w, 3]; reference batches also hold the
Inception `mu` and `sigma`) and folders of image files.

An npz's `arr_0` is streamed in chunks from the zip member (a 50,000-sample batch at 256 px
is 10 GB), and its shape and dtype are read from the .npy header without loading it.
"""

import zipfile

import numpy as np
from PIL import Image

from vit_jax import errors
from vit_jax import paths

IMAGE_SUFFIXES = ('.png', '.jpg', '.jpeg')


def _npz_members(path):
  if not paths.exists(path):
    raise errors.MissingInputError(f'{path!r} does not exist')
  try:
    with paths.open_binary(path) as f, zipfile.ZipFile(f) as z:
      return [n[: -len('.npy')] for n in z.namelist() if n.endswith('.npy')]
  except zipfile.BadZipFile as e:
    raise errors.UserInputError(f'{path!r} is not an .npz file (not a zip: {e})') from e


def _header(member):
  version = np.lib.format.read_magic(member)
  if version == (1, 0):
    return np.lib.format.read_array_header_1_0(member)
  return np.lib.format.read_array_header_2_0(member)


class NpzImages:
  """`arr_0` of an ADM-layout npz: `shape`, and `batches(size)` of uint8 [b, h, w, 3]."""

  def __init__(self, path, what='samples'):
    self.path = path
    if 'arr_0' not in _npz_members(path):
      raise errors.UserInputError(
          f"{what} {path!r} has no arr_0; give an npz in ADM's layout (arr_0: uint8 "
          '[n, height, width, 3], as python -m vit_jax.sample writes it)'
      )
    with paths.open_binary(path) as f, zipfile.ZipFile(f) as z, z.open('arr_0.npy') as m:
      self.shape, fortran, self.dtype = _header(m)
    if len(self.shape) != 4 or self.shape[-1] != 3:
      raise errors.UserInputError(
          f'{what} {path!r}: arr_0 has shape {self.shape}, not [n, height, width, 3] RGB '
          'images (latents must be decoded to images first)'
      )
    if self.dtype != np.uint8 or fortran:
      raise errors.UserInputError(
          f'{what} {path!r}: arr_0 is {self.dtype}{" (Fortran order)" if fortran else ""}; '
          "ADM's layout is uint8 in 0..255 (from [-1, 1]: round((x + 1) * 127.5), clipped)"
      )
    if self.shape[0] < 2:
      raise errors.UserInputError(
          f'{what} {path!r} holds {self.shape[0]} image(s); a covariance needs at least 2'
      )

  def __len__(self):
    return self.shape[0]

  def batches(self, size):
    per_image = int(np.prod(self.shape[1:]))
    with paths.open_binary(self.path) as f, zipfile.ZipFile(f) as z, z.open('arr_0.npy') as m:
      _header(m)
      for start in range(0, len(self), size):
        count = min(size, len(self) - start)
        data = m.read(count * per_image)
        yield np.frombuffer(data, np.uint8).reshape(count, *self.shape[1:])


def center_crop(image, size):
  """ADM's center_crop_arr: halve with a box filter while the short side is >= 2 * size,
  resize the short side to `size` (bicubic), crop the center square; uint8 [size, size, 3]."""
  image = image.convert('RGB')
  while min(image.size) >= 2 * size:
    image = image.resize(tuple(x // 2 for x in image.size), resample=Image.BOX)
  scale = size / min(image.size)
  image = image.resize(tuple(round(x * scale) for x in image.size), resample=Image.BICUBIC)
  array = np.asarray(image)
  top, left = (array.shape[0] - size) // 2, (array.shape[1] - size) // 2
  return array[top : top + size, left : left + size]


class FolderImages:
  """The image files under a folder (any depth, sorted), center-cropped to `size` as ADM
  prepares its reference batches."""

  def __init__(self, path, size):
    self.size = size
    self.files = sorted(self._walk(path))
    if len(self.files) < 2:
      raise errors.UserInputError(
          f'{path!r} holds {len(self.files)} {"/".join(IMAGE_SUFFIXES)} file(s); a covariance '
          'needs at least 2 images'
      )
    self.shape = (len(self.files), size, size, 3)

  def _walk(self, path):
    for name in paths.listdir(path):
      child = paths.join(path, name)
      if paths.isdir(child):
        yield from self._walk(child)
      elif name.lower().endswith(IMAGE_SUFFIXES):
        yield child

  def __len__(self):
    return len(self.files)

  def batches(self, size):
    import io

    for start in range(0, len(self), size):
      yield np.stack(
          [
              center_crop(Image.open(io.BytesIO(paths.read_bytes(f))), self.size)
              for f in self.files[start : start + size]
          ]
      )


def open_images(path, what, image_size):
  """NpzImages or FolderImages; a missing path is one clear error naming it."""
  if not paths.exists(path):
    raise errors.MissingInputError(f'{what} {path!r} does not exist')
  if paths.isdir(path):
    return FolderImages(path, image_size)
  return NpzImages(path, what)


def reference_statistics(path, dim):
  """(mu, sigma) stored in an npz (ADM's reference batch or --ref_stats_out), or None when it
  holds only images; statistics of another dimension than `dim` are an error."""
  if not paths.exists(path):
    raise errors.MissingInputError(f'reference {path!r} does not exist')
  if paths.isdir(path) or not {'mu', 'sigma'} <= set(_npz_members(path)):
    return None
  with paths.open_binary(path) as f, np.load(f, allow_pickle=False) as data:
    mu, sigma = np.asarray(data['mu'], np.float64), np.asarray(data['sigma'], np.float64)
  if mu.shape != (dim,) or sigma.shape != (dim, dim):
    raise errors.UserInputError(
        f'reference {path!r} holds statistics of mean {mu.shape} / covariance {sigma.shape}, '
        f'but the Inception pool features are {dim}-d; give statistics of the FID Inception '
        "pool_3 features (ADM's reference batches, or --ref_stats_out)"
    )
  return mu, sigma
