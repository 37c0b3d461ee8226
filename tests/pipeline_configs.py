"""The input pipeline's config fields, for tests that call `input_pipeline` directly."""

import ml_collections

FASHION_MNIST_DIR = '/usr/share/datasets/fashion-mnist'


def pipeline_config(**overrides):
  """Fashion-MNIST at 14x14 RGB, batch 32, flip only; `overrides` are flattened field names."""
  config = ml_collections.ConfigDict(
      dict(
          dataset='fashion_mnist',
          tfds_data_dir=None,
          tfds_manual_dir=None,
          tfds_download=True,
          fashion_mnist_dir=FASHION_MNIST_DIR,
          batch=32,
          batch_eval=64,
          seed=0,
          prefetch=1,
          pp=dict(
              train='train',
              test='test',
              crop=14,
              resize=0,
              inception_crop=False,
              inception_crop_area=(0.05, 1.0),
              pad_crop=0,
              flip=True,
              color_jitter=dict(brightness=0.0, contrast=0.0, saturation=0.0, hue=0.0, prob=1.0),
              grayscale_prob=0.0,
              blur_prob=0.0,
              blur_sigma=(0.1, 2.0),
              solarize_prob=0.0,
              mixup=0.0,
              randaugment=dict(num_layers=0, magnitude=0),
              channels=3,
              skip_undecodable=False,
              on_device=False,
          ),
      )
  )
  config.update_from_flattened_dict(overrides)
  return config
