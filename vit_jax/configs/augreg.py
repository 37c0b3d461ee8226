"""Fine-tuning AugReg checkpoints: `--config=configs/augreg.py:<name>[,<dataset>]`.

<name> is an AugReg model name (`B_16`, `S_32`, `R26_S_32`, ...; see
configs.models.AUGREG_CONFIGS) or the path of an AugReg `.npz` file, whose name starts with the
model name (`B_16-i21k-300ep-lr_0.001-aug_medium1-wd_0.1-do_0.0-sd_0.0.npz`); the file then
becomes `pretrained_path`. <dataset> defaults to cifar100.
"""
import os

import ml_collections

from vit_jax.configs import common
from vit_jax.configs import models
from vit_jax.configs import vit


def get_config(name_and_dataset='B_16'):
  name_or_file, _, dataset = name_and_dataset.partition(',')
  model = os.path.basename(name_or_file).split('-')[0]
  if model not in models.AUGREG_CONFIGS:
    raise vit.unknown_name('AugReg model', model, list(models.AUGREG_CONFIGS))
  config = common.get_config()
  config.model = ml_collections.ConfigDict(models.AUGREG_CONFIGS[model].to_dict())
  vit.apply_dataset_preset(config, dataset or 'cifar100')
  if name_or_file.endswith('.npz'):
    config.pretrained_path = name_or_file
  return config.lock()
