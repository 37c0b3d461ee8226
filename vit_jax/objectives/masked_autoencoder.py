"""'mae': masked-autoencoder pre-training (vit_jax/models/mae.py, fields in `config.mae`).

Mean squared error on the masked tokens, labels unused; evaluated by the same loss on the test
split with fixed masks (`eval_reconstruction_loss`, lower is better). At the end the encoder
is written as WORKDIR/encoder.npz, a classifier checkpoint without a head to fine-tune.
"""

import jax
from jax.experimental import multihost_utils
import jax.numpy as jnp

from vit_jax import checkpoint
from vit_jax import paths
from vit_jax.models import mae
from vit_jax.objectives import base
from vit_jax.objectives import classification

ENCODER_CHECKPOINT = 'encoder.npz'


def _reconstruction_losses(model, config, params, images, *, train, rngs=None):
  """Each example's masked-token MSE [batch] under the MAE `model`."""
  predictions, mask = model.apply({'params': params}, images, train=train, rngs=rngs)
  target = mae.reconstruction_target(
      images, model.encoder['patches']['size'], config.mae.norm_pix_loss
  )
  return mae.per_example_loss(predictions, target, mask)


def export_encoder(params, workdir):
  """WORKDIR/encoder.npz: a masked autoencoder's encoder as a classifier checkpoint without a
  head, for `config.pretrained_path` (written by process 0; every process gathers)."""
  path = paths.join(workdir, ENCODER_CHECKPOINT)
  encoder = multihost_utils.process_allgather(params['encoder'], tiled=True)
  if jax.process_index() == 0:
    checkpoint.save(encoder, path)
  return path


class MaskedAutoencoderObjective(base.Objective):
  """Pixel (or patch) reconstruction of masked tokens."""

  name = 'mae'

  def make_model(self, config, num_classes):
    del num_classes  # self-supervised
    return mae.MaskedAutoencoder(
        encoder=config.model.to_dict(),
        decoder=config.mae.decoder.to_dict(),
        mask_ratio=config.mae.mask_ratio,
        **classification.dtypes(config),
    )

  def make_loss_fn(self, model, config, num_classes, patch_dropout=False):
    del num_classes, patch_dropout

    def mae_loss(params, images, labels, rng, scale=None):
      del labels  # self-supervised
      masking, dropout = jax.random.split(rng)
      per_example = _reconstruction_losses(
          model, config, params, images, train=True, rngs={'masking': masking, 'dropout': dropout}
      )
      return classification.weighted_mean(per_example, scale), {}

    return mae_loss

  def eval_metric_names(self, config):
    return ('reconstruction_loss',)

  def make_eval_step(self, model, config):
    def mae_eval_step(params, batch):  # no 'masking' rng: the model's fixed eval masks
      per_example = _reconstruction_losses(model, config, params, batch['image'], train=False)
      return jnp.sum(per_example * batch['mask']), jnp.sum(batch['mask'])

    return mae_eval_step

  def finish(self, config, params, workdir):
    return {'encoder_checkpoint': export_encoder(params, workdir)}
