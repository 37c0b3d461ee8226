"""What a run trains for, `config.objective`: each objective one object, chosen by name.

- 'classification' (the default): a ViT / PiT classifier (objectives/classification.py);
- 'mae': masked-autoencoder pre-training (objectives/masked_autoencoder.py);
- 'diffusion': a class-conditional DiT trained as DiT trains (objectives/diffusion.py).

The train loop (vit_jax/train.py) asks the objective for its model, loss, eval step, metric
names, what an evaluation adds and what the end of a run writes; sharding, checkpoints,
resume and metrics are the same for all.
"""

from vit_jax.configs import schema
from vit_jax.objectives import classification
from vit_jax.objectives import diffusion
from vit_jax.objectives import masked_autoencoder

REGISTRY = {
    'classification': classification.Classification(),
    'mae': masked_autoencoder.MaskedAutoencoderObjective(),
    'diffusion': diffusion.Diffusion(),
}
OBJECTIVES = schema.BY_NAME['objective'].choices
assert set(REGISTRY) == set(OBJECTIVES), 'register every objective the schema allows'


def objective(config):
  return config.get('objective', 'classification')


def get(config):
  """The objective object of a config (classification for a config without the field)."""
  return REGISTRY[objective(config)]


def eval_metric(config):
  """The main eval metric's name, logged as eval_<name>."""
  return get(config).eval_metric_names(config)[0]


def eval_metric_names(config):
  return get(config).eval_metric_names(config)


def make_model(config, num_classes):
  """The model the objective trains; its parameters live where fine-tuning expects them."""
  return get(config).make_model(config, num_classes)


def patch_dropout_steps(config):
  """How many first train steps run with patch dropout (0: none; `config.patch_dropout`)."""
  drop = config.get('patch_dropout')
  return int(drop.steps) if drop is not None and drop.rate else 0


def make_loss_fn(model, config, num_classes, patch_dropout=False):
  """loss_fn(params, images, labels, rng, scale=None) -> (loss, {name: scalar})."""
  return get(config).make_loss_fn(model, config, num_classes, patch_dropout)


def make_eval_step(model, config=None):
  """eval_step(params, batch) -> (metric sums, example count); `config=None`:
  classification."""
  return (REGISTRY['classification'] if config is None else get(config)).make_eval_step(
      model, config
  )
