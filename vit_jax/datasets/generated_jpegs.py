"""TFDS `generated_jpegs`: JPEG classification datasets made here, for benchmarks and tests.

The input pipeline reads TFDS datasets by index from array_record files; this builder makes
such datasets without a download, at any size: `tiny` for tests, `imagenet_like` (JPEGs of
ImageNet's typical 500x375, for per-core throughput) and `million` (1,000,000 small JPEGs,
for resume timing). Images are smooth random colour fields (so they compress like photos,
not like noise), encoded once into a pool and reused in rotation: writing a million records
costs the records, not a million encodes. Record i has label i % num_classes.
"""

import dataclasses
import io

import numpy as np
from PIL import Image
import tensorflow_datasets as tfds


@dataclasses.dataclass
class JpegConfig(tfds.core.BuilderConfig):
  train: int = 0
  test: int = 0
  height: int = 0
  width: int = 0
  num_classes: int = 0
  pool: int = 0  # distinct encoded images


def _smooth_image(rng, height, width):
  """An 8x8 grid of random colours, bilinearly upsampled, plus a little grain."""
  coarse = Image.fromarray(rng.integers(0, 256, (8, 8, 3), np.uint8))
  image = np.asarray(coarse.resize((width, height), Image.BILINEAR), np.int16)
  grain = rng.integers(-12, 13, image.shape, np.int16)
  return np.clip(image + grain, 0, 255).astype(np.uint8)


def jpeg_pool(config, seed=0):
  """`config.pool` distinct JPEG byte strings of config.height x config.width."""
  rng = np.random.default_rng(seed)
  pool = []
  for _ in range(config.pool):
    out = io.BytesIO()
    Image.fromarray(_smooth_image(rng, config.height, config.width)).save(
        out, format='JPEG', quality=90
    )
    pool.append(out.getvalue())
  return pool


class GeneratedJpegs(tfds.core.GeneratorBasedBuilder):
  """Generated JPEG image classification (see the module docstring)."""

  VERSION = tfds.core.Version('1.0.0')
  BUILDER_CONFIGS = [  # noqa: RUF012 (TFDS reads this class attribute)
      JpegConfig(name='tiny', train=48, test=20, height=24, width=32, num_classes=5, pool=48),
      JpegConfig(
          name='imagenet_like',
          train=4096,
          test=512,
          height=375,
          width=500,
          num_classes=1000,
          pool=256,
      ),
      JpegConfig(
          name='million',
          train=1_000_000,
          test=1000,
          height=32,
          width=32,
          num_classes=1000,
          pool=1000,
      ),
  ]

  def _info(self):
    return self.dataset_info_from_configs(
        features=tfds.features.FeaturesDict(
            {
                'image': tfds.features.Image(shape=(None, None, 3), encoding_format='jpeg'),
                'label': tfds.features.ClassLabel(num_classes=self.builder_config.num_classes),
            }
        ),
        supervised_keys=('image', 'label'),
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # nothing is downloaded
    config = self.builder_config
    pool = jpeg_pool(config)
    return {
        'train': self._generate_examples(pool, config.train, 0),
        'test': self._generate_examples(pool, config.test, 1),
    }

  def _generate_examples(self, pool, count, offset):
    labels = self.builder_config.num_classes
    for i in range(count):
      yield i, {'image': pool[(i * 7 + offset) % len(pool)], 'label': i % labels}


def prepare(config_name, data_dir, file_format='array_record'):
  """Writes generated_jpegs/<config_name> into data_dir (skipped when already there)."""
  builder = tfds.builder(
      f'generated_jpegs/{config_name}', data_dir=data_dir, file_format=file_format
  )
  builder.download_and_prepare(download_config=tfds.download.DownloadConfig(try_download_gcs=False))
  return builder
