"""The input pipeline's config fields, for tests that call `input_pipeline` directly."""

from vit_jax.configs import common

FASHION_MNIST_DIR = '/usr/share/datasets/fashion-mnist'


def pipeline_config(**overrides):
  """Fashion-MNIST at 14x14 RGB, batch 32, flip only; `overrides` are flattened field names.

  Every other field has its schema default (configs/common.py), so a new pipeline field needs
  no entry here."""
  config = common.get_config()
  config.update_from_flattened_dict(
      {
          'dataset': 'fashion_mnist',
          'tfds_data_dir': None,
          'tfds_manual_dir': None,
          'tfds_download': True,
          'fashion_mnist_dir': FASHION_MNIST_DIR,
          'batch': 32,
          'batch_eval': 64,
          'seed': 0,
          'prefetch': 1,
          'pp.train': 'train',
          'pp.test': 'test',
          'pp.crop': 14,
          'pp.resize': 0,
          'pp.inception_crop': False,
          'pp.pad_crop': 0,
          'pp.flip': True,
          'pp.mixup': 0.0,
          'pp.randaugment.num_layers': 0,
          'pp.channels': 3,
          'pp.skip_undecodable': False,
          'pp.on_device': False,
      }
  )
  config.update_from_flattened_dict(overrides)
  return config
