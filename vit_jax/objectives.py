"""What a run trains for, `config.objective`: one train loop, two losses.

- 'classification' (the default): `VisionTransformer`, softmax cross-entropy on the labels,
  evaluated by test accuracy.
- 'mae': masked-autoencoder pre-training (vit_jax/models/mae.py, fields in `config.mae`):
  mean squared error on the masked tokens, labels unused, evaluated by the same loss on the
  test split with fixed masks (`eval_reconstruction_loss`, lower is better).

Each objective supplies the model, the train loss and the eval step's (sum, count); the
loop, sharding, checkpoints, resume and metrics are the same for both (vit_jax/train.py).
"""
import jax
import jax.numpy as jnp
import optax

from vit_jax.configs import schema
from vit_jax.models import mae
from vit_jax.models import vit

OBJECTIVES = schema.BY_NAME['objective'].choices
# The eval metric each objective reports, logged as eval_<name>.
EVAL_METRICS = {'classification': 'accuracy', 'mae': 'reconstruction_loss'}
_PATCH_DROPOUT_STREAM = 0x70D  # folded into the step's key: token subsets apart from dropout


def objective(config):
  return config.get('objective', 'classification')


def eval_metric(config):
  return EVAL_METRICS[objective(config)]


def eval_metric_names(config):
  """The names of the values the eval step sums, in order: the metric, and with
  config.eval_flip its single-view accuracy."""
  if objective(config) == 'classification' and config.get('eval_flip', False):
    return ('accuracy', 'accuracy_single_view')
  return (eval_metric(config),)


def make_model(config, num_classes):
  """The model the objective trains; its parameters live where fine-tuning expects them."""
  dtypes = dict(dtype=jnp.dtype(config.dtype), param_dtype=jnp.dtype(config.param_dtype))
  if objective(config) == 'mae':
    return mae.MaskedAutoencoder(encoder=config.model.to_dict(),
                                 decoder=config.mae.decoder.to_dict(),
                                 mask_ratio=config.mae.mask_ratio, **dtypes)
  return vit.VisionTransformer(num_classes=num_classes, **dtypes, **config.model)


def _weighted_mean(per_example, scale):
  return (per_example * scale).mean() if scale is not None else per_example.mean()


def _reconstruction_losses(model, config, params, images, *, train, rngs=None):
  """Each example's masked-token MSE [batch] under the MAE `model`."""
  predictions, mask = model.apply({'params': params}, images, train=train, rngs=rngs)
  target = mae.reconstruction_target(images, model.encoder['patches']['size'],
                                     config.mae.norm_pix_loss)
  return mae.per_example_loss(predictions, target, mask)


def patch_dropout_steps(config):
  """How many first train steps run with patch dropout (0: none; `config.patch_dropout`)."""
  drop = config.get('patch_dropout')
  return int(drop.steps) if drop is not None and drop.rate else 0


def make_loss_fn(model, config, num_classes, patch_dropout=False):
  """loss_fn(params, images, labels, rng, scale=None) -> scalar train loss.

  `scale` holds per-example weights (skipped undecodable images weigh 0; see train.py).
  `patch_dropout=True`: each image is classified from a random subset of its patch tokens,
  a fraction `config.patch_dropout.rate` of them left out (its own draw per image and step;
  the position embeddings go with the tokens kept). Training then costs about that fraction
  less; the train step switches it off after `config.patch_dropout.steps` (train.py).
  """
  if objective(config) == 'mae':
    def mae_loss(params, images, labels, rng, scale=None):
      del labels  # self-supervised
      masking, dropout = jax.random.split(rng)
      per_example = _reconstruction_losses(model, config, params, images, train=True,
                                           rngs={'masking': masking, 'dropout': dropout})
      return _weighted_mean(per_example, scale)
    return mae_loss

  def classification_loss(params, images, labels, rng, scale=None):
    subset = {}
    if patch_dropout:
      ph, pw = model.patches['size']
      num_tokens = (images.shape[1] // ph) * (images.shape[2] // pw)
      subset_rng = jax.random.fold_in(rng, _PATCH_DROPOUT_STREAM)
      subset['token_subset'] = mae.random_masking(subset_rng, images.shape[0], num_tokens,
                                                  config.patch_dropout.rate)[0]
    logits = model.apply({'params': params}, images, train=True, rngs={'dropout': rng},
                         **subset)
    if config.label_smoothing:
      labels = labels * (1. - config.label_smoothing) + config.label_smoothing / num_classes
    return _weighted_mean(optax.softmax_cross_entropy(logits.astype(jnp.float32), labels),
                          scale)
  return classification_loss


def make_eval_step(model, config=None):
  """eval_step(params, batch) -> (sum of the metric over real examples, their count).

  Padded examples (batch['mask'] == 0) count for nothing, so the eval covers every test
  example exactly once. `config=None` means classification.
  """
  if config is not None and objective(config) == 'mae':
    def mae_eval_step(params, batch):  # no 'masking' rng: the model's fixed eval masks
      per_example = _reconstruction_losses(model, config, params, batch['image'], train=False)
      return jnp.sum(per_example * batch['mask']), jnp.sum(batch['mask'])
    return mae_eval_step

  flip = config is not None and config.get('eval_flip', False)

  def classification_eval_step(params, batch):
    logits = model.apply({'params': params}, batch['image'], train=False)
    label = jnp.argmax(batch['label'], -1)
    count = lambda x: jnp.sum((jnp.argmax(x, -1) == label) * batch['mask'])
    if not flip:
      return count(logits), jnp.sum(batch['mask'])
    # Flip test-time augmentation: the image and its mirror (width axis) vote together.
    mirrored = model.apply({'params': params}, batch['image'][:, :, ::-1], train=False)
    return jnp.stack([count(logits + mirrored), count(logits)]), jnp.sum(batch['mask'])
  return classification_eval_step
