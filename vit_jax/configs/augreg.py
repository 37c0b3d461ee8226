"""Fine-tuning AugReg checkpoints: `--config=configs/augreg.py:<name or file>[,<dataset>]`.

<file> is the path (local, gs://, https://) of an AugReg `.npz` file, whose name starts with
the model name (`B_16-i21k-300ep-lr_0.001-aug_medium1-wd_0.1-do_0.0-sd_0.0.npz`); it becomes
`pretrained_path`. <name> is an AugReg model name (`B_16`, `S_32`, `R26_S_32`, ...; see
configs.models.AUGREG_CONFIGS): then --config.pretrained_path must name the file, or the run
stops at start (the recipe fine-tunes; it never trains from scratch). <dataset> defaults to
cifar100.
"""

import os

import ml_collections

from vit_jax import errors
from vit_jax.configs import common
from vit_jax.configs import models
from vit_jax.configs import vit


def get_config(name_and_dataset='B_16'):
  name_or_file, _, dataset = name_and_dataset.partition(',')
  model = os.path.basename(name_or_file).split('-')[0]
  if model not in models.AUGREG_CONFIGS:
    raise vit.unknown_name('AugReg model', model, list(models.AUGREG_CONFIGS))
  if model != name_or_file and not name_or_file.endswith('.npz'):
    raise errors.UserInputError(
        f'{name_or_file!r} names an AugReg checkpoint but is not a .npz file: give its path, '
        f'e.g. configs/augreg.py:{name_or_file}.npz (or '
        f'gs://vit_models/augreg/{os.path.basename(name_or_file)}.npz)'
    )
  config = common.get_config()
  config.model = ml_collections.ConfigDict(models.AUGREG_CONFIGS[model].to_dict())
  vit.apply_dataset_preset(config, dataset or 'cifar100')
  config.pretrained_required = True
  if name_or_file.endswith('.npz'):
    config.pretrained_path = name_or_file
  return config.lock()
