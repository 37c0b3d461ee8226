"""Take a trained model to other codebases: the parameters of a training workdir as a file.

  python -m vit_jax.export /tmp/vit --format=npz  /tmp/vit.npz        # [--step=N]
  python -m vit_jax.export /tmp/vit --format=timm /tmp/vit.safetensors
  python -m vit_jax.export /tmp/vit --format=hf   /tmp/vit-hf

- npz: the original's layout and Linen names (`config.pretrained_path`, vision_transformer,
  big_vision-style loaders, `vit_jax.checkpoint.load`);
- timm: a `.safetensors` state dict of timm's VisionTransformer (timm uses erf GELU: a run
  trained with tanh GELU, the default here, differs slightly there; the command says so);
- hf: a folder (config.json + model.safetensors) for transformers'
  ViTForImageClassification.from_pretrained, with the run's class names.
The writers are the ones of vit_jax.checkpoint. The workdir is local or gs://, and so is
OUT; OUT must not exist yet (hf: or be an empty folder), so nothing is overwritten.
"""

from absl import flags

from vit_jax import checkpoint
from vit_jax import cli
from vit_jax import errors
from vit_jax import paths
from vit_jax.checkpoints import trained_run

FORMATS = ('npz', 'timm', 'hf')


def _check_out(out, fmt):
  if not paths.exists(out):
    return
  if fmt == 'hf' and paths.isdir(out) and not paths.listdir(out):
    return
  raise errors.UserInputError(
      f'{out} exists; pass a new path (nothing is overwritten)'
      + (' or an empty folder' if fmt == 'hf' else '')
  )


def export(workdir, out, fmt, step=None):
  """Writes the classifier of `workdir` (at `step`, default its newest) to `out` in `fmt`;
  returns a one-line description of what was written."""
  if fmt not in FORMATS:
    raise errors.UserInputError(f'--format={fmt!r} is not one of {FORMATS}')
  if not trained_run.is_run(workdir):
    raise errors.UserInputError(
        f'{workdir} is not a training workdir (no config.json of a vit_jax run in it); pass '
        'the --workdir of a `python -m vit_jax.main` run'
    )
  _check_out(out, fmt)
  run = trained_run.load(workdir, step)
  model_config = trained_run.model_config(run)
  note = ''
  if fmt == 'npz':
    checkpoint.save(run.params, out)
  elif fmt == 'timm':
    checkpoint.export_timm(run.params, out)
    if (model_config.get('transformer') or {}).get('gelu_approximate', True):
      note = ' (trained with tanh GELU; timm computes erf GELU: logits differ slightly)'
  else:
    checkpoint.export_hf(
        run.params, model_config, out, class_names=run.class_names, image_size=run.config.pp.crop
    )
  return f'{workdir} step {run.step} -> {out} ({fmt}){note}'


def main(argv):
  if len(argv) != 3:
    raise errors.UserInputError(
        f'give WORKDIR and OUT, e.g. python -m vit_jax.export /tmp/vit --format=npz '
        f'/tmp/vit.npz (got {argv[1:]})'
    )
  print(export(argv[1], argv[2], flags.FLAGS.format, flags.FLAGS.step))


def _define_flags():
  """The command's flags, defined only when it runs (importers keep their own flags)."""
  flags.DEFINE_enum('format', None, FORMATS, 'npz, timm (.safetensors) or hf (a folder).')
  flags.DEFINE_integer('step', None, 'The checkpoint step; default: the newest.')
  flags.mark_flags_as_required(['format'])


if __name__ == '__main__':
  _define_flags()
  cli.run(main)
