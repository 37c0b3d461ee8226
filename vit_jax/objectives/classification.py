"""'classification' (the default objective): `VisionTransformer`, softmax cross-entropy on the
labels, evaluated by test accuracy (with config.eval_flip also the single-view accuracy)."""

import jax
import jax.numpy as jnp
import optax

from vit_jax.models import mae
from vit_jax.models import vit
from vit_jax.objectives import base

PATCH_DROPOUT_STREAM = 0x70D  # folded into the step's key: token subsets apart from dropout


def dtypes(config):
  return dict(dtype=jnp.dtype(config.dtype), param_dtype=jnp.dtype(config.param_dtype))


def weighted_mean(per_example, scale):
  return (per_example * scale).mean() if scale is not None else per_example.mean()


class Classification(base.Objective):
  """Labels and cross-entropy; patch dropout for the first config.patch_dropout.steps."""

  name = 'classification'

  def make_model(self, config, num_classes):
    return vit.VisionTransformer(num_classes=num_classes, **dtypes(config), **config.model)

  def make_loss_fn(self, model, config, num_classes, patch_dropout=False):
    """With `patch_dropout=True` each image is classified from a random subset of its patch
    tokens, a fraction `config.patch_dropout.rate` of them left out (its own draw per image
    and step; the position embeddings go with the tokens kept)."""

    def classification_loss(params, images, labels, rng, scale=None):
      subset = {}
      if patch_dropout:
        ph, pw = model.patches['size']
        num_tokens = (images.shape[1] // ph) * (images.shape[2] // pw)
        subset_rng = jax.random.fold_in(rng, PATCH_DROPOUT_STREAM)
        subset['token_subset'] = mae.random_masking(
            subset_rng, images.shape[0], num_tokens, config.patch_dropout.rate
        )[0]
      logits = model.apply({'params': params}, images, train=True, rngs={'dropout': rng}, **subset)
      if config.label_smoothing:
        labels = labels * (1.0 - config.label_smoothing) + config.label_smoothing / num_classes
      loss = optax.softmax_cross_entropy(logits.astype(jnp.float32), labels)
      return weighted_mean(loss, scale), {}

    return classification_loss

  def eval_metric_names(self, config):
    if config is not None and config.get('eval_flip', False):
      return ('accuracy', 'accuracy_single_view')
    return ('accuracy',)

  def make_eval_step(self, model, config):
    """Padded examples (batch['mask'] == 0) count for nothing, so the eval covers every test
    example exactly once."""
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
