"""Class-conditional samples from a DiT: a training workdir (its EMA parameters) or a released
facebookresearch/DiT checkpoint.

  python -m vit_jax.sample --checkpoint=WORKDIR --labels=all --per_class=8 --out=DIR
  python -m vit_jax.sample --checkpoint=DiT-XL-2-256x256.pt --labels=207,360,387 \
      --cfg_scale=4 --steps=250 --sampler=ddpm --out=DIR

Writes DIR/samples.png (a row per class asked for) and DIR/samples.npz in ADM's layout
(`arr_0` uint8 NHWC images, `arr_1` labels; latents of a latent DiT as float32 `arr_0`).
Sampling is one compiled loop per chunk, sharded over every device (and process); the same
seed and device count give the same samples. Settings default to the run's config.diffusion
(or DiT's: 250 DDPM steps, cfg 1.5 on 3 channels, for a released checkpoint).
"""

import json
import sys

from absl import app
from absl import flags
import ml_collections
import numpy as np

from vit_jax import errors

flags.DEFINE_string(
    'checkpoint',
    None,
    'A training workdir (objective diffusion) or a DiT '
    'state dict (.pt, .safetensors, .npz); local, gs://, https:// or hf://.',
)
flags.DEFINE_integer('step', None, 'The workdir checkpoint to sample from (default: newest).')
flags.DEFINE_string('labels', 'all', "'all' or comma-separated class ids, e.g. 207,360.")
flags.DEFINE_integer('per_class', 4, 'Samples for each label.')
flags.DEFINE_float('cfg_scale', None, 'Classifier-free guidance scale (>= 1; 1: unguided).')
flags.DEFINE_integer('steps', None, 'Sampling steps (a respacing of the training steps).')
flags.DEFINE_enum('sampler', None, ['ddpm', 'ddim'], 'Ancestral (ddpm) or DDIM sampling.')
flags.DEFINE_integer(
    'guide_channels',
    None,
    "Output channels guided (default: the run's; " 'DiT: 3); 0 guides all input channels.',
)
flags.DEFINE_integer('seed', 0, 'Seed of the starting noise and of every step.')
flags.DEFINE_integer('batch', None, "Samples per compiled call (default: the run's).")
flags.DEFINE_string('out', None, 'Folder (local or gs://) for samples.png and samples.npz.')
flags.mark_flags_as_required(['checkpoint', 'out'])
FLAGS = flags.FLAGS


def _released(path):
  """(config, params) of a released DiT checkpoint, with DiT's sampling defaults."""
  from vit_jax.checkpoints import dit_format
  from vit_jax.configs import dit as dit_configs

  params, found = dit_format.load(path)
  model = {
      k: found[k]
      for k in (
          'patch_size',
          'hidden_size',
          'depth',
          'num_heads',
          'mlp_ratio',
          'class_dropout_prob',
          'learn_sigma',
      )
  }
  config = ml_collections.ConfigDict(
      {
          'model': dict(model, model_name='DiT'),
          'seed': 0,
          'dtype': 'float32',
          'param_dtype': 'float32',
          'mesh': {'data': -1, 'fsdp': 1, 'seq': 1},
          'pp': {'crop': found.get('input_size', 32), 'channels': found['in_channels']},
          'diffusion': dit_configs.diffusion_fields().to_dict(),
      }
  )
  return config, params


def _workdir(path, step):
  """(config, EMA params) of a diffusion training workdir."""
  from vit_jax import paths
  from vit_jax.checkpoints import orbax_state

  config = ml_collections.ConfigDict(json.loads(paths.read_text(paths.join(path, 'config.json'))))
  if config.get('objective') != 'diffusion':
    raise errors.UserInputError(
        f"{path} trained objective={config.get('objective', 'classification')!r}, not a "
        'diffusion model; sample from a run of configs/dit.py'
    )
  return config, orbax_state.load_params(paths.join(path, 'checkpoints'), step, prefer_ema=True)


def _labels(spec, num_classes):
  if spec == 'all':
    return list(range(num_classes))
  try:
    labels = [int(x) for x in spec.split(',') if x.strip()]
  except ValueError:
    raise errors.UserInputError(f"--labels={spec!r}: give 'all' or class ids like 1,5,7") from None
  bad = [y for y in labels if not 0 <= y < num_classes]
  if bad or not labels:
    raise errors.UserInputError(
        f'--labels={spec!r}: class ids must be in 0..{num_classes - 1} (the null class '
        f'{num_classes} is for guidance only)'
    )
  return labels


def _settings(config):
  """Applies the flags to config.diffusion, checked before anything compiles."""
  from vit_jax.diffusion import schedule

  d = config.diffusion
  for name, flag in (
      ('cfg_scale', FLAGS.cfg_scale),
      ('sample_steps', FLAGS.steps),
      ('sampler', FLAGS.sampler),
      ('sample_batch', FLAGS.batch),
  ):
    if flag is not None:
      d[name] = flag
  if FLAGS.guide_channels is not None:
    d.guide_channels = FLAGS.guide_channels or None
  if d.cfg_scale < 1:
    raise errors.UserInputError(f'--cfg_scale={d.cfg_scale} must be >= 1 (1: unguided)')
  if d.sample_steps < 1 or d.sample_batch < 1 or FLAGS.per_class < 1:
    raise errors.UserInputError('--steps, --batch and --per_class must be >= 1')
  from vit_jax.objectives import diffusion

  schedule.space_timesteps(d.steps, diffusion.respacing(d.sampler, d.sample_steps))


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  import jax

  from vit_jax import checkpoint
  from vit_jax import paths
  from vit_jax.evaluation import image_grid
  from vit_jax.objectives import diffusion
  from vit_jax.runtime import partitioning

  path = FLAGS.checkpoint
  is_run = paths.isdir(path) and paths.exists(paths.join(path, 'config.json'))
  if not is_run and checkpoint.load_with_format(path)[0] != 'DiT':
    raise errors.UserInputError(f'{path} is neither a diffusion workdir nor a DiT checkpoint')
  config, params = _workdir(path, FLAGS.step) if is_run else _released(path)
  config.unlock()
  _settings(config)
  objective = diffusion.Diffusion()
  num_classes = diffusion.num_classes_of(config, params)
  labels = np.repeat(_labels(FLAGS.labels, num_classes), FLAGS.per_class)
  mesh = partitioning.create_mesh({'data': -1})
  partitioning.validate_batch(config.diffusion.sample_batch, mesh, '--batch')
  progress = lambda done, total: print(f'sampled {done}/{total}', file=sys.stderr, flush=True)
  with jax.set_mesh(mesh):
    samples = objective.generate(config, params, labels, FLAGS.seed, mesh, progress)
  if jax.process_index() == 0:
    paths.makedirs(FLAGS.out)
    images = samples if samples.shape[-1] not in (1, 3) else image_grid.to_uint8(samples)
    buffer = __import__('io').BytesIO()
    np.savez(buffer, arr_0=images, arr_1=labels.astype(np.int64))
    paths.write_bytes(paths.join(FLAGS.out, 'samples.npz'), buffer.getvalue())
    if samples.shape[-1] in (1, 3):
      rows = len(set(labels.tolist()))
      image_grid.write_png(
          paths.join(FLAGS.out, 'samples.png'),
          samples,
          rows=rows,
          scale=max(1, 128 // samples.shape[1]),
      )
    print(f'{len(samples)} samples written to {FLAGS.out}')


if __name__ == '__main__':
  app.run(errors.reporting_user_errors(main))
