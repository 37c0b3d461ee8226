"""A training workdir read as a model: what `python -m vit_jax.inference --checkpoint=WORKDIR`
and `python -m vit_jax.export WORKDIR` read.

The model comes from the run's WORKDIR/config.json (the config it trained with), the
parameters from its newest checkpoint (or `step`), the class names from config.json (written
by the run; for workdirs of older versions, the known names of Fashion-MNIST and ImageNet).
Local and gs:// workdirs alike.
"""

import json
from typing import NamedTuple

import ml_collections

from vit_jax import errors
from vit_jax import paths
from vit_jax.datasets import class_names as labels
from vit_jax.paths import downloads
from vit_jax.runtime import workdir as workdir_lib

CHECKPOINTS = 'checkpoints'


class Run(NamedTuple):
  """A trained run: its config, the params of `step` (numpy), and its class names or None."""

  config: ml_collections.ConfigDict
  params: dict
  step: int
  class_names: list | None


def is_run(path):
  """Whether `path` is a vit_jax training workdir (a folder with a run's config.json)."""
  path = str(path)
  if downloads.is_download(path) or not paths.exists(path) or not paths.isdir(path):
    return False
  return workdir_lib.is_run_config(path)


def saved_steps(workdir):
  folder = paths.join(workdir, CHECKPOINTS)
  if not paths.exists(folder):
    return []
  return sorted(int(n) for n in paths.listdir(folder) if n.isdigit())


def _class_names(names, dataset, num_classes):
  if not names:  # a workdir of an older version
    if num_classes == 1000 and dataset.startswith('imagenet'):
      return labels.imagenet1k()
    names = {'fashion_mnist': labels.FASHION_MNIST}.get(dataset)
  return list(names) if names and len(names) == num_classes else None


def load(workdir, step=None):
  """The Run of `workdir` at `step` (default: its newest checkpoint)."""
  from vit_jax.checkpoints import orbax_state

  saved = json.loads(paths.read_text(paths.join(workdir, workdir_lib.CONFIG)))
  steps = saved_steps(workdir)
  if not steps:
    raise errors.MissingInputError(
        f'{workdir} is a training workdir without a checkpoint yet; train until the first '
        'checkpoint step (config.checkpoint_every, or the last step) is saved'
    )
  if step is None:
    step = steps[-1]
  elif step not in steps:
    raise errors.UserInputError(f'--step={step}: {workdir} holds the steps {steps}; pick one')
  if saved.get('objective', 'classification') != 'classification':
    raise errors.UserInputError(
        f"{workdir} trained a {saved['objective']!r} model, not a classifier; its encoder "
        'is WORKDIR/encoder.npz (for config.pretrained_path), fine-tune it to classify'
    )
  names = saved.pop('class_names', None)
  params = orbax_state.load_params(paths.join(workdir, CHECKPOINTS), step)
  names = _class_names(names, saved.get('dataset', ''), params['head']['bias'].shape[0])
  return Run(ml_collections.ConfigDict(saved), params, step, names)


def model_config(run, scan_layers=None):
  """The VisionTransformer keyword arguments of `run` (the trained model; `scan_layers` as
  given, or as trained)."""
  config = run.config.model.to_dict()
  if scan_layers is not None and config.get('transformer') is not None:
    config['transformer'] = dict(config['transformer'], scan_layers=scan_layers)
  return config


def classifier(run, scan_layers=False):
  """(model, params in its layout, image size, channels) of a Run."""
  import jax.numpy as jnp

  from vit_jax import attention
  from vit_jax.models import layer_stack
  from vit_jax.models import VisionTransformer

  config = model_config(run, scan_layers)
  transformer = config.get('transformer') or {}
  if (transformer.get('attention') or {}).get('impl') in attention.SHARDED:
    # A schedule over the training mesh's 'seq' axis; one host computes the same numbers.
    config['transformer'] = dict(transformer, attention=dict(transformer['attention'], impl='auto'))
  model = VisionTransformer(
      num_classes=run.params['head']['bias'].shape[0],
      dtype=jnp.dtype(run.config.dtype),
      param_dtype=jnp.dtype(run.config.param_dtype),
      **config,
  )
  params = layer_stack.to_layout(run.params, scan_layers)
  return model, params, run.config.pp.crop, run.config.pp.channels
