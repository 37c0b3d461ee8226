"""'diffusion': a class-conditional DiT trained as facebookresearch/DiT trains it.

Each step draws one timestep per image uniformly from the 1000 of the linear schedule and
standard-normal noise, and minimises DiT's hybrid loss (noise MSE plus the variational bound
that trains the learned variance); labels are dropped to the null class at the model's
class_dropout_prob for classifier-free guidance. Labels come from the pipeline's one-hot
labels (mixup is refused with this objective, so argmax is exact).

Evaluation: the same loss on the test split at fixed timesteps (spread evenly over the batch)
and fixed noise, then samples of every class with the EMA parameters, written as a PNG grid
(a row per class) under WORKDIR/samples/, and with `config.diffusion.feature_network` the
Fréchet distance of their classifier features to the test split's and their conditional
accuracy (`eval_fid_classifier_features`, `eval_conditional_accuracy`). The last evaluation
also reports the test split's own distance to the train split, the floor for that number.

A latent run (`config.diffusion.vae` set, e.g. on `config.dataset='latents:<root>'`) decodes
the grid's samples with that VAE (loaded once per run) before writing the PNG, a row for
each of at most 20 classes spread over the class ids.
"""

import jax
from jax.experimental import multihost_utils
import jax.numpy as jnp
import numpy as np

from vit_jax import diffusion as diffusion_lib
from vit_jax import input_pipeline
from vit_jax import paths
from vit_jax.diffusion import guidance
from vit_jax.evaluation import classifier_features
from vit_jax.evaluation import frechet
from vit_jax.evaluation import image_grid
from vit_jax.models import dit
from vit_jax.objectives import base
from vit_jax.objectives import classification
from vit_jax.runtime import partitioning

SAMPLES_DIR = 'samples'
MAX_DECODED_ROWS = 20
_TIMESTEP_STREAM, _NOISE_STREAM, _SAMPLE_STREAM = 1, 2, 3


def train_diffusion(config):
  """The full-length process DiT trains with (`create_diffusion('')`)."""
  return diffusion_lib.create_diffusion(
      '',
      noise_schedule=config.diffusion.noise_schedule,
      learn_sigma=config.model.learn_sigma,
      diffusion_steps=config.diffusion.steps,
  )


def respacing(sampler, steps):
  """DiT's respacing string for a sampler and step count: 'ddim50', '250'."""
  return f'ddim{steps}' if sampler == 'ddim' else str(steps)


def num_classes_of(config, params):
  """The class count of a DiT's parameters (the label table has a null row with dropout)."""
  rows = params['y_embedder']['embedding_table']['embedding'].shape[0]
  return rows - int(config.model.get('class_dropout_prob', 0.1) > 0)


def grid_classes(num_classes, decoded):
  """The classes that get a row of the sample grid: all of them, or for decoded latents
  (256x256 images: a row of 1,000 ImageNet classes would be a 2 GB picture) at most
  MAX_DECODED_ROWS spread evenly over the class ids."""
  if not decoded or num_classes <= MAX_DECODED_ROWS:
    return np.arange(num_classes)
  return np.unique(np.linspace(0, num_classes - 1, MAX_DECODED_ROWS).round().astype(int))


class Diffusion(base.Objective):
  """DiT's loss, evaluation loss, sample grids and sample metrics."""

  name = 'diffusion'

  def __init__(self):
    self._reference = {}  # feature statistics of data splits, computed once per run setting
    self._vaes = {}  # VAE path -> (module, params), loaded once
    self._samplers = {}  # (config, classes) -> the jitted sampler, compiled once per run

  def _vae(self, path):
    if path not in self._vaes:
      from vit_jax.models import vae  # pixel runs never import it

      self._vaes[path] = vae.load(path)
    return self._vaes[path]

  def to_images(self, config, samples):
    """Samples as images in [-1, 1]: latents decoded with config.diffusion.vae, pixels as
    they are."""
    path = config.diffusion.get('vae')
    if not path:
      return samples
    from vit_jax.models import vae

    module, params = self._vae(path)
    return vae.decode_latents(module, params, samples)

  def make_model(self, config, num_classes):
    return dit.DiT(num_classes=num_classes, **classification.dtypes(config), **config.model)

  def init_inputs(self, config, image_shape):
    return (
        jnp.zeros((1,) + tuple(image_shape)),
        jnp.zeros((1,), jnp.int32),
        jnp.zeros((1,), jnp.int32),
    )

  def make_loss_fn(self, model, config, num_classes, patch_dropout=False):
    del num_classes, patch_dropout
    process = train_diffusion(config)

    def diffusion_loss(params, images, labels, rng, scale=None):
      t_rng = jax.random.fold_in(rng, _TIMESTEP_STREAM)
      noise_rng = jax.random.fold_in(rng, _NOISE_STREAM)
      t = jax.random.randint(t_rng, images.shape[:1], 0, process.num_timesteps)
      noise = jax.random.normal(noise_rng, images.shape, jnp.float32)
      y = jnp.argmax(labels, -1)
      model_fn = lambda x, t: model.apply(
          {'params': params}, x, t, y, train=True, rngs={'dropout': rng}
      )
      terms = process.training_losses(model_fn, images.astype(jnp.float32), t, noise)
      mean = lambda name: classification.weighted_mean(terms[name], scale)
      return mean('loss'), {'mse': mean('mse'), 'vb': mean('vb')}

    return diffusion_loss

  def eval_metric_names(self, config):
    return ('loss', 'mse', 'vb')

  def make_eval_step(self, model, config):
    process = train_diffusion(config)

    def diffusion_eval_step(params, batch):
      key = jax.random.PRNGKey(config.seed)  # traced: no eager op on the mesh's devices
      images = batch['image'].astype(jnp.float32)
      n = images.shape[0]
      # Timesteps spread evenly over the batch and fixed noise: the same eval every time.
      t = (jnp.arange(n) * process.num_timesteps) // n
      noise = jax.random.normal(jax.random.fold_in(key, _NOISE_STREAM), images.shape)
      y = jnp.argmax(batch['label'], -1)
      model_fn = lambda x, t: model.apply({'params': params}, x, t, y, train=False)
      terms = process.training_losses(model_fn, images, t, noise)
      sums = jnp.stack([jnp.sum(terms[k] * batch['mask']) for k in ('loss', 'mse', 'vb')])
      return sums, jnp.sum(batch['mask'])

    return diffusion_eval_step

  # ------------------------------------------------------------------------------- sampling
  def generate(self, config, params, labels, seed, mesh, progress=None):
    """Samples [n, H, W, C] for int `labels` [n] (images clipped to [-1, 1]; latents of a run
    with config.diffusion.vae unclipped, guided on config.diffusion.guide_channels), generated
    in chunks of config.diffusion.sample_batch laid out over the mesh's data axes; the same
    for a seed and device count. `progress(done, total)` is called after each chunk."""
    num_classes = num_classes_of(config, params)
    d = config.diffusion
    key = (config.to_json(), num_classes)
    if key not in self._samplers:  # every evaluation of a run samples with the same program
      model = self.make_model(config, num_classes)
      process = diffusion_lib.create_diffusion(
          respacing(d.sampler, d.sample_steps),
          noise_schedule=d.noise_schedule,
          learn_sigma=config.model.learn_sigma,
          diffusion_steps=d.steps,
      )
      shape = (config.pp.crop, config.pp.crop, config.pp.channels)
      self._samplers = {
          key: guidance.make_sampler(
              model,
              process,
              shape,
              sampler=d.sampler,
              cfg_scale=d.cfg_scale,
              guide_channels=d.guide_channels,
              clip_denoised=not d.get('vae'),  # pixels live in [-1, 1]; DiT leaves latents be
          )
      }
    sample = self._samplers[key]
    chunk = d.sample_batch
    labels = np.asarray(labels, np.int32)
    padded = np.concatenate([labels, np.zeros(-len(labels) % chunk, np.int32)])
    sharding = partitioning.batch_sharding(mesh)
    out = []
    for i in range(0, len(padded), chunk):
      key = jax.random.fold_in(jax.random.PRNGKey(seed), i // chunk)
      part = padded[i : i + chunk]
      part = jax.make_array_from_callback(part.shape, sharding, lambda index, p=part: p[index])
      images = sample(params, part, key)
      out.append(np.asarray(multihost_utils.process_allgather(images, tiled=True)))
      if progress:
        progress(min(i + chunk, len(labels)), len(labels))
    return np.concatenate(out)[: len(labels)]

  def _reference_features(self, config, network, split):
    """Feature-network features of every example of a split (eval pipeline, no augmentation),
    computed once per (dataset, split, crop, network)."""
    key = (config.dataset, split, config.pp.crop, config.diffusion.feature_network)
    if key not in self._reference:
      reader = config.copy_and_resolve_references()
      with reader.unlocked():
        reader.pp.test = split
      features = []
      for batch in input_pipeline.get_data(reader, 'eval', process_index=0, process_count=1):
        keep = batch['mask'] > 0
        features.append(network.features_and_logits(batch['image'][keep])[0])
      self._reference[key] = np.concatenate(features)
    return self._reference[key]

  def evaluate_extra(self, config, params, step, workdir, mesh):
    d = config.diffusion
    num_classes = num_classes_of(config, params)
    labels = np.repeat(np.arange(num_classes), d.eval_samples_per_class)
    samples = self.generate(config, params, labels, seed=config.seed * 1_000_003 + step, mesh=mesh)
    if jax.process_index() == 0:
      per_row = min(d.eval_samples_per_class, 10)
      shown = samples.reshape((num_classes, d.eval_samples_per_class) + samples.shape[1:])
      rows = grid_classes(num_classes, bool(d.get('vae')))
      shown = shown[rows, :per_row].reshape((-1,) + samples.shape[1:])
      image_grid.write_png(
          paths.join(workdir, SAMPLES_DIR, f'step_{step:07d}.png'),
          self.to_images(config, shown),
          rows=len(rows),
          scale=1 if d.get('vae') else 2,
      )
    if not d.feature_network:
      return {}
    network = classifier_features.FeatureNetwork(d.feature_network)
    features, logits = network.features_and_logits(samples)
    test = self._reference_features(config, network, config.pp.test)
    values = {
        'eval_fid_classifier_features': frechet.frechet_distance_of_features(features, test),
        'eval_conditional_accuracy': classifier_features.conditional_accuracy(logits, labels),
    }
    if step == config.total_steps:
      train = self._reference_features(config, network, config.pp.train)
      values['eval_fid_classifier_features_test_vs_train'] = frechet.frechet_distance_of_features(
          test, train
      )
    return values
