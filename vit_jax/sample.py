"""Class-conditional samples from a DiT: a training workdir (its EMA parameters) or a released
facebookresearch/DiT checkpoint.

  python -m vit_jax.sample --checkpoint=WORKDIR --labels=all --per_class=8 --out=DIR
  python -m vit_jax.sample --checkpoint=DiT-XL-2-256x256.pt --labels=207,360,387 \
      --cfg_scale=4 --steps=250 --sampler=ddpm --out=DIR
  python -m vit_jax.sample --checkpoint=DiT-XL-2-256x256.pt --num_samples=50000 \
      --vae=hf://stabilityai/sd-vae-ft-ema --out=DIR

With --labels/--per_class: DIR/samples.png (a row per class asked for) and DIR/samples.npz in
ADM's layout (`arr_0` uint8 NHWC images, `arr_1` labels; latents of a latent DiT as float32
`arr_0`). With --num_samples (FID-50K): that many samples of uniformly random classes, in
chunks written to DIR/chunks/ as they finish (a restarted command skips them), then
DIR/samples.npz of uint8 RGB images, latents decoded through the run's VAE (or --vae); see
vit_jax/diffusion/sharded_sampling.py. Sampling is one compiled loop per chunk, sharded over
every device and process; the same seed and device count give the same samples. Settings
default to the run's config.diffusion (or DiT's: 250 DDPM steps, cfg 1.5 on 3 channels, for a
released checkpoint).
"""

import json
import signal
import sys

from absl import app
from absl import flags
import ml_collections
import numpy as np

from vit_jax import cli
from vit_jax import errors

FLAGS = flags.FLAGS


def _define_flags():
  """The command's flags, defined only when it runs (importers keep their own flags)."""
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
  flags.DEFINE_integer(
      'num_samples',
      None,
      'Samples of uniformly random classes (e.g. 50000 for FID-50K), written chunk by chunk to '
      'OUT/chunks/ (resumable), then as OUT/samples.npz; instead of --labels/--per_class.',
  )
  flags.DEFINE_string(
      'vae',
      None,
      "With --num_samples: the diffusers VAE folder that decodes a latent DiT's samples "
      "(default: the run's config.diffusion.vae), e.g. hf://stabilityai/sd-vae-ft-ema.",
  )
  flags.DEFINE_string('coordinator_address', None, 'jax.distributed coordinator host:port.')
  flags.DEFINE_integer('num_processes', None, 'Number of processes (multi-process runs).')
  flags.DEFINE_integer('process_id', None, 'This process index (multi-process runs).')
  flags.DEFINE_integer(
      'coordinator_timeout', 300, 'Seconds to wait for the other processes at start; then exit 2.'
  )
  flags.mark_flags_as_required(['checkpoint', 'out'])


def _released(path):
  """(config, params, None) of a released DiT checkpoint, with DiT's sampling defaults."""
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
  return config, params, None


def _workdir(path, step):
  """(config, EMA params, step) of a diffusion training workdir (newest step by default)."""
  from vit_jax import paths
  from vit_jax.checkpoints import orbax_state

  config = ml_collections.ConfigDict(json.loads(paths.read_text(paths.join(path, 'config.json'))))
  if config.get('objective') != 'diffusion':
    raise errors.UserInputError(
        f"{path} trained objective={config.get('objective', 'classification')!r}, not a "
        'diffusion model; sample from a run of configs/dit.py'
    )
  checkpoints = paths.join(path, 'checkpoints')
  if step is None:  # resolved here: a resumed --num_samples run must not mix checkpoints
    step = orbax_state.latest_step(checkpoints)
  return config, orbax_state.load_params(checkpoints, step, prefer_ema=True), step


def load(path, step=None):
  """(config, params, step) of a diffusion workdir (EMA parameters; the newest step unless
  `step`) or of a released DiT checkpoint (DiT's sampling defaults, step None)."""
  from vit_jax import checkpoint
  from vit_jax import paths

  is_run = paths.isdir(path) and paths.exists(paths.join(path, 'config.json'))
  if not is_run and checkpoint.load_with_format(path)[0] != 'DiT':
    raise errors.UserInputError(f'{path} is neither a diffusion workdir nor a DiT checkpoint')
  config, params, step = _workdir(path, step) if is_run else _released(path)
  config.unlock()
  return config, params, step


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


def _check_count(num_samples, seed):
  if num_samples < 1:
    raise errors.UserInputError(f'--num_samples={num_samples} must be >= 1')
  if not -(2**31) <= seed < 2**31:
    raise errors.UserInputError(f'--seed={seed} must fit in 32 bits')


def _check_request():
  """The flags that need nothing loaded, checked first."""
  if FLAGS.num_samples is None:
    if FLAGS.vae:
      raise errors.UserInputError(
          f'--vae={FLAGS.vae} decodes the samples of --num_samples runs; add --num_samples=N'
      )
    return
  _check_count(FLAGS.num_samples, FLAGS.seed)
  given = [f'--{name}' for name in ('labels', 'per_class') if FLAGS[name].present]
  if given:
    raise errors.UserInputError(
        f'--num_samples={FLAGS.num_samples} samples uniformly random classes; drop '
        f'{" and ".join(given)} (or drop --num_samples to sample the classes you name)'
    )


def _grid(config, params, mesh):
  """--labels/--per_class: samples.png and samples.npz of the classes asked for."""
  import jax

  from vit_jax import paths
  from vit_jax.evaluation import image_grid
  from vit_jax.objectives import diffusion

  objective = diffusion.Diffusion()
  num_classes = diffusion.num_classes_of(config, params)
  labels = np.repeat(_labels(FLAGS.labels, num_classes), FLAGS.per_class)
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


def _decoder(config, path):
  """(VAE module, params) that decode a latent DiT's samples, or (None, None) for pixels;
  checked against the model's channels before anything compiles."""
  from vit_jax.models import vae

  channels = config.pp.channels
  if not path:
    if channels not in (1, 3):
      raise errors.UserInputError(
          f'the DiT samples {channels}-channel latents; give --vae=FOLDER (the diffusers VAE '
          'it was trained on, e.g. hf://stabilityai/sd-vae-ft-ema) to decode them to images'
      )
    return None, None
  module, params = vae.load(path)
  if module.latent_channels != channels:
    raise errors.UserInputError(
        f'--vae={path} decodes {module.latent_channels}-channel latents, but the DiT samples '
        f'{channels} channels; give the VAE the model was trained on'
    )
  return module, params


def sample_at_scale(config, params, out, *, num_samples, seed, checkpoint, step, mesh, vae=None):
  """--num_samples: `num_samples` samples of random classes in chunks of
  config.diffusion.sample_batch to OUT/chunks (those already there are kept), then
  OUT/samples.npz; latents decoded through the VAE folder `vae` (default
  config.diffusion.vae). `checkpoint` and `step` are recorded in OUT/sampling.json. Returns
  the exit status: 0, or 128 + the number of the signal that stopped it."""
  import jax

  from vit_jax import diffusion as diffusion_lib
  from vit_jax import paths
  from vit_jax.diffusion import guidance
  from vit_jax.diffusion import sharded_sampling
  from vit_jax.objectives import diffusion
  from vit_jax.runtime import partitioning
  from vit_jax.runtime import preemption

  _check_count(num_samples, seed)
  d, channels = config.diffusion, config.pp.channels
  partitioning.validate_batch(d.sample_batch, mesh, '--batch')
  if d.guide_channels is not None and not 1 <= d.guide_channels <= channels:
    raise errors.UserInputError(
        f'--guide_channels={d.guide_channels} must be in 1..{channels} (the input channels); '
        '0 guides all of them'
    )
  vae = vae or d.get('vae')
  decoder, vae_params = _decoder(config, vae)
  num_classes = diffusion.num_classes_of(config, params)
  settings = {
      'checkpoint': checkpoint,
      'step': step,
      'seed': seed,
      'cfg_scale': d.cfg_scale,
      'steps': d.sample_steps,
      'sampler': d.sampler,
      'guide_channels': d.guide_channels,
      'num_samples': num_samples,
      'chunk_size': d.sample_batch,
      'vae': vae,
  }
  sharded_sampling.check_out_dir(out, settings)
  plan = sharded_sampling.Plan(out, num_samples, d.sample_batch, seed, num_classes)
  model = diffusion.Diffusion().make_model(config, num_classes)
  process = diffusion_lib.create_diffusion(
      diffusion.respacing(d.sampler, d.sample_steps),
      noise_schedule=d.noise_schedule,
      learn_sigma=config.model.learn_sigma,
      diffusion_steps=d.steps,
  )
  sample = guidance.make_sampler(
      model,
      process,
      (config.pp.crop, config.pp.crop, channels),
      sampler=d.sampler,
      cfg_scale=d.cfg_scale,
      guide_channels=d.guide_channels,
      clip_denoised=decoder is None,  # pixels live in [-1, 1]; DiT leaves latents unclipped
  )
  chunk_fn = sharded_sampling.make_chunk_fn(sample, decoder)
  place = lambda tree: jax.device_put(tree, partitioning.param_shardings(tree, mesh))
  with jax.set_mesh(mesh):
    signum = sharded_sampling.sample_chunks(
        plan, chunk_fn, place(params), vae_params and place(vae_params), mesh, settings
    )
  if signum:
    status = preemption.exit_status(signum)
    print(
        f'Stopped by {signal.Signals(signum).name} after a whole chunk; {len(plan.written())} of '
        f'{plan.num_chunks} chunks in {paths.join(out, "chunks")}; exit status {status}. '
        'Run the same command to sample the rest.',
        file=sys.stderr,
    )
    return status
  if jax.process_index() == 0:
    out = sharded_sampling.write_samples(plan)
    print(f'{plan.num_samples} samples written to {out}')
  if jax.process_count() > 1:  # the others wait while process 0 writes the npz
    from jax.experimental import multihost_utils

    multihost_utils.sync_global_devices('vit_jax.sample samples.npz written')
  return 0


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  _check_request()
  from vit_jax.runtime import processes

  processes.resolve(FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id)
  from vit_jax.runtime import partitioning

  partitioning.initialize_distributed(
      FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id, FLAGS.coordinator_timeout
  )
  config, params, step = load(FLAGS.checkpoint, FLAGS.step)
  _settings(config)
  mesh = partitioning.create_mesh({'data': -1})
  partitioning.validate_batch(config.diffusion.sample_batch, mesh, '--batch')
  if FLAGS.num_samples is None:
    _grid(config, params, mesh)
    return
  status = sample_at_scale(
      config,
      params,
      FLAGS.out,
      num_samples=FLAGS.num_samples,
      seed=FLAGS.seed,
      checkpoint=FLAGS.checkpoint,
      step=step,
      mesh=mesh,
      vae=FLAGS.vae,
  )
  if status:
    sys.exit(status)


if __name__ == '__main__':
  _define_flags()
  cli.run(main)
