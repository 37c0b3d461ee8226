"""Compile a config's train and eval steps for a Cloud TPU topology, on any machine.

  python -m vit_jax.aot --config=configs/pit.py:imagenet_pit_b --topology=v5p:4x4x4 \
      --config.mesh.data=-1 --config.model.transformer.scan_layers=True

needs libtpu (`pip install 'vit_jax[tpu]'`), not a TPU: XLA compiles for compile-only devices
of the topology (`jax.experimental.topologies`). Prints, per chip: HBM use of each step
(arguments, outputs, temporaries against the chip's HBM), FLOPs per step (counted from the
optimized HLO, vit_jax/perf/hlo_flops.py), HBM traffic (vit_jax/perf/hlo_traffic.py), and
the roofline bound on the step time
and MFU from the chip's peak FLOP/s and HBM bandwidth (vit_jax/perf/hardware.py). Exits 1 with
XLA's out-of-memory message when a step does not fit (or, when XLA compiled it anyway, with
the report and the step that needs more HBM than the chip has).

  python -m vit_jax.aot --vae_image_size=256 --vae_batch=64 --topology=v5p:2x2x2

compiles Stable Diffusion's VAE (the latent DiTs' encoder and decoder) instead, with the same
report for its encode and decode.
"""

import dataclasses
import json
import os
import sys

from absl import app
from absl import flags
from ml_collections import config_flags

from vit_jax import cli
from vit_jax import errors
from vit_jax import paths

FLAGS = flags.FLAGS

# Label counts of datasets the configs name, so no dataset has to be present to compile.
NUM_CLASSES = {
    'imagenet2012': 1000,
    'imagenet21k': 21843,
    'cifar10': 10,
    'cifar100': 100,
    'mnist': 10,
    'fashion_mnist': 10,
    'oxford_iiit_pet': 37,
    'oxford_flowers102': 102,
    'latents:': 1000,  # the ImageNet-256 latent recipes before their folder is set
}
# libtpu looks for a TPU VM's metadata server and worker list at start (there is none here)
# and takes /tmp/libtpu_lockfile, which would fail this compile-only use whenever any other
# JAX process on the machine holds it.
LIBTPU_ENV = {
    'TPU_SKIP_MDS_QUERY': '1',
    'TPU_WORKER_HOSTNAMES': 'localhost',
    'TPU_ACCELERATOR_TYPE': 'v5litepod-4',
    'ALLOW_MULTIPLE_LIBTPU_LOAD': '1',
}


@dataclasses.dataclass
class StepReport:
  """Per-chip figures of one compiled step."""

  argument_bytes: int
  output_bytes: int
  alias_bytes: int
  temp_bytes: int
  code_bytes: int
  flops: float
  hbm_traffic_bytes: float

  @property
  def hbm_bytes(self):
    """Peak HBM held by the step: live arguments, new outputs, temporaries, code."""
    return (
        self.argument_bytes
        + self.output_bytes
        - self.alias_bytes
        + self.temp_bytes
        + self.code_bytes
    )


def num_classes_of(config, override=None):
  if override is not None:
    if not isinstance(override, int) or override < 1:
      raise errors.UserInputError(
          f'--num_classes={override} must be >= 1 (classes of the '
          "head), or omitted to take the dataset's"
      )
    return override
  if config.dataset in NUM_CLASSES:
    return NUM_CLASSES[config.dataset]
  if config.dataset.startswith('latents:'):  # its train split's latents.json, if here
    meta = paths.join(config.dataset[len('latents:') :], config.pp.train.split('[')[0])
    meta = paths.join(meta, 'latents.json')
    if paths.exists(meta):
      return json.loads(paths.read_text(meta))['num_classes']
  raise errors.UserInputError(
      f'config.dataset={config.dataset!r}: its number of classes is not known without the '
      f'data; pass --num_classes=N (known: {sorted(NUM_CLASSES)}).'
  )


def topology_devices(topology, num_slices=1):
  """Compile-only TPU devices of `topology` (libtpu required, no TPU)."""
  if not isinstance(num_slices, int) or num_slices < 1:
    raise errors.UserInputError(
        f'--num_slices={num_slices} must be >= 1 (slices of the '
        'topology, data parallel across them)'
    )
  for key, value in LIBTPU_ENV.items():
    os.environ.setdefault(key, value)
  from jax.experimental import topologies

  try:
    return topologies.get_topology_desc(
        topology_name=topology, platform='tpu', num_slices=num_slices
    ).devices
  except Exception as e:
    text = f'{type(e).__name__}: {e}'
    hint = (
        "install libtpu: pip install 'vit_jax[tpu]'"
        if 'tpu' in text.lower()
        and (
            'unknown backend' in text.lower()
            or 'not found' in text.lower()
            or 'plugin' in text.lower()
        )
        else "use a name such as 'v5e:4x4', 'v5p:2x2x2', 'v4:2x2x1'"
    )
    raise errors.UserInputError(
        f'--topology={topology!r} gave no TPU devices ({text[:300]}); ' f'{hint}.'
    ) from e


def _abstract(shape, dtype, sharding):
  import jax

  return jax.ShapeDtypeStruct(shape, dtype, sharding=sharding)


def compile_steps(config, devices, num_classes):
  """(train, eval) jax.stages.Compiled of `config` on a mesh of `devices`."""
  import jax
  import jax.numpy as jnp

  from vit_jax import config_checks
  from vit_jax import train
  from vit_jax.runtime import partitioning
  from vit_jax.training import optim
  from vit_jax.training import steps

  mesh = partitioning.create_mesh(config.mesh, devices)
  config_checks.validate(config, mesh)
  model = train.make_model(config, num_classes)
  tx, schedule = optim.make_optimizer(config)
  image_shape = (config.pp.crop, config.pp.crop, config.pp.channels)
  with jax.set_mesh(mesh):
    state, shardings = steps.abstract_train_state(config, model, tx, mesh, image_shape)
    batch_sharding = partitioning.batch_sharding(mesh)
    images = lambda n: _abstract((n,) + image_shape, jnp.float32, batch_sharding)
    labels = lambda n: _abstract((n, num_classes), jnp.float32, batch_sharding)
    train_batch = {
        'image': images(config.batch),
        'label': labels(config.batch),
        'stop': _abstract((config.batch,), jnp.int32, batch_sharding),
    }
    eval_batch = {
        'image': images(config.batch_eval),
        'label': labels(config.batch_eval),
        'mask': _abstract((config.batch_eval,), jnp.float32, batch_sharding),
    }
    train_step = steps.jit_train_step(config, model, tx, schedule, num_classes, shardings, mesh)
    compiled_train = train_step.lower(state, train_batch).compile()
    eval_step = steps.jit_eval_step(model, shardings, mesh, config)
    compiled_eval = eval_step.lower(state['params'], eval_batch).compile()
  return compiled_train, compiled_eval, mesh


def step_report(compiled):
  from vit_jax.perf import hlo_flops
  from vit_jax.perf import hlo_traffic

  memory = compiled.memory_analysis()
  text = compiled.as_text()  # large for big programs: read once for both counts
  counted = hlo_flops.count_text(text)
  return StepReport(
      argument_bytes=memory.argument_size_in_bytes,
      output_bytes=memory.output_size_in_bytes,
      alias_bytes=memory.alias_size_in_bytes,
      temp_bytes=memory.temp_size_in_bytes,
      code_bytes=memory.generated_code_size_in_bytes,
      flops=float(counted.flops),
      hbm_traffic_bytes=float(hlo_traffic.count_text(text)),
  )


def roofline(step, chip):
  """Seconds of a per-chip StepReport on `chip`: compute (FLOPs at peak, a lower bound),
  memory (estimated traffic at full HBM bandwidth), their max (the roofline estimate), and
  the MFU bound compute / roofline."""
  compute = step.flops / chip.peak_flops
  memory = step.hbm_traffic_bytes / chip.hbm_bytes_per_sec
  seconds = max(compute, memory)
  return {
      'compute_seconds': compute,
      'memory_seconds': memory,
      'roofline_seconds': seconds,
      'mfu_bound': compute / seconds if seconds else 0.0,
  }


def summarize(topology, num_slices, devices, mesh, batch, compiled_train, compiled_eval):
  """The report of a config's two compiled steps, as a dict (per-chip figures)."""
  return summarize_programs(
      topology,
      num_slices,
      devices,
      mesh,
      batch,
      {'train_step': compiled_train, 'eval_step': compiled_eval},
  )


def summarize_programs(topology, num_slices, devices, mesh, batch, compiled):
  """The report of compiled programs {name: jax.stages.Compiled}, as a dict; `steps` lists
  their names in order."""
  from vit_jax.perf import hardware

  chip = hardware.for_topology(topology)
  result = {
      'topology': topology,
      'num_slices': num_slices,
      'chips': len(devices),
      'device_kind': devices[0].device_kind,
      'mesh': dict(mesh.shape),
      'chip': dataclasses.asdict(chip) if chip else None,
      'batch': batch,
      'steps': list(compiled),
  }
  for name, program in compiled.items():
    step = step_report(program)
    entry = dict(dataclasses.asdict(step), hbm_bytes=step.hbm_bytes)
    if chip:
      entry.update(roofline(step, chip))
      entry['hbm_fraction'] = step.hbm_bytes / chip.hbm_bytes
    result[name] = entry
  return result


def compile_vae(devices, image_size, batch, dtype='bfloat16', vae_config=None):
  """({'vae_encode': ..., 'vae_decode': ...} compiled, mesh): a VAE (by default Stable
  Diffusion's, models/vae.py SD_VAE: sd-vae-ft-ema's shapes) encoding `batch` images of
  `image_size` pixels and decoding their latents, the batch split over every device."""
  import jax
  import jax.numpy as jnp

  from vit_jax.models import vae
  from vit_jax.runtime import partitioning

  vae_config = dict(vae_config or vae.SD_VAE)
  factor = 2 ** (len(vae_config['block_out_channels']) - 1)
  if image_size < 1 or image_size % factor:
    raise errors.UserInputError(
        f'--vae_image_size={image_size} must be a positive multiple of {factor} (the VAE '
        'halves the image that many times); e.g. 256 or 512.'
    )
  if batch < 1 or batch % len(devices):
    raise errors.UserInputError(
        f'--vae_batch={batch} must be a positive multiple of the {len(devices)} chips '
        '(the batch is split over them).'
    )
  module = vae.AutoencoderKL(**vae_config, dtype=jnp.dtype(dtype))
  mesh = partitioning.create_mesh({'data': -1}, devices)
  replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  split = partitioning.batch_sharding(mesh)
  images = _abstract((batch, image_size, image_size, 3), jnp.float32, split)
  side = image_size // factor
  latents = _abstract((batch, side, side, module.latent_channels), jnp.float32, split)
  shapes = jax.eval_shape(lambda x: module.init(jax.random.key(0), x), images)['params']
  params = jax.tree.map(lambda a: _abstract(a.shape, a.dtype, replicated), shapes)
  apply = lambda method: jax.jit(
      lambda p, x: module.apply({'params': p}, x, method=method), out_shardings=split
  )
  with jax.set_mesh(mesh):
    compiled = {
        'vae_encode': apply(module.encode).lower(params, images).compile(),
        'vae_decode': apply(module.decode).lower(params, latents).compile(),
    }
  return compiled, mesh


def report(config, topology, num_slices=1, num_classes=None):
  """Everything `python -m vit_jax.aot` prints, as a dict."""
  classes = num_classes_of(config, num_classes)  # the flags' errors before libtpu starts
  devices = topology_devices(topology, num_slices)
  compiled_train, compiled_eval, mesh = compile_steps(config, devices, classes)
  return summarize(topology, num_slices, devices, mesh, config.batch, compiled_train, compiled_eval)


def report_vae(topology, image_size, batch, num_slices=1, dtype='bfloat16'):
  """What `python -m vit_jax.aot --vae_image_size=N` prints, as a dict."""
  devices = topology_devices(topology, num_slices)
  compiled, mesh = compile_vae(devices, image_size, batch, dtype)
  return summarize_programs(topology, num_slices, devices, mesh, batch, compiled)


def _gib(x):
  return f'{x / 2**30:.2f} GiB' if x >= 2**30 else f'{x / 2**20:.1f} MiB'


def format_report(result):
  chip = result['chip']
  lines = [
      f"{result['topology']} x{result['num_slices']}: {result['chips']} chips "
      f"({result['device_kind']}), mesh {result['mesh']}, batch {result['batch']}"
  ]
  for name in result.get('steps', ('train_step', 'eval_step')):
    s = result[name]
    line = (
        f"  {name}: HBM {_gib(s['hbm_bytes'])} per chip (arguments "
        f"{_gib(s['argument_bytes'])}, outputs {_gib(s['output_bytes'])}, aliased "
        f"{_gib(s['alias_bytes'])}, temporaries {_gib(s['temp_bytes'])})"
    )
    if chip:
      line += f" of {_gib(chip['hbm_bytes'])} ({100 * s['hbm_fraction']:.0f} %)"
    line += (
        f"\n    {s['flops'] / 1e12:.4g} TFLOP per chip per step, HBM traffic "
        f"~{_gib(s['hbm_traffic_bytes'])} (estimate)"
    )
    if chip:
      line += (
          f"\n    step >= {1e3 * s['compute_seconds']:.3g} ms of compute, "
          f"~{1e3 * s['memory_seconds']:.3g} ms of memory traffic: roofline "
          f"{1e3 * s['roofline_seconds']:.3g} ms, MFU <= {100 * s['mfu_bound']:.0f} % "
          f"({chip['name']}: "
          f"{chip['peak_flops'] / 1e12:.0f} TFLOP/s, "
          f"{chip['hbm_bytes_per_sec'] / 1e9:.0f} GB/s)"
      )
    lines.append(line)
  return '\n'.join(lines)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  try:
    if FLAGS.vae_image_size:
      result = report_vae(
          FLAGS.topology, FLAGS.vae_image_size, FLAGS.vae_batch, FLAGS.num_slices, FLAGS.vae_dtype
      )
    elif FLAGS.config is None:
      raise errors.UserInputError(
          'give --config=<file>:<recipe> (a train and eval step) or --vae_image_size=N '
          '(the VAE encoding N x N images)'
      )
    else:
      result = report(FLAGS.config, FLAGS.topology, FLAGS.num_slices, FLAGS.num_classes)
  except Exception as e:
    text = str(e)
    if 'RESOURCE_EXHAUSTED' in text or 'Ran out of memory' in text:
      print(f'Does not fit on {FLAGS.topology}: {text}', file=sys.stderr)
      sys.exit(1)
    raise
  print(json.dumps(result) if FLAGS.json else format_report(result))
  over = [name for name in result['steps'] if result[name].get('hbm_fraction', 0.0) > 1.0]
  if over:  # XLA does not always refuse a program over HBM at compile time
    print(
        f'Does not fit on {FLAGS.topology}: {" and ".join(over)} need more HBM per chip '
        f'than the {result["chip"]["name"]} has (see above).',
        file=sys.stderr,
    )
    sys.exit(1)


def _define_flags():
  """The command's flags, defined only when it runs (importers keep their own flags)."""
  config_flags.DEFINE_config_file('config', None, 'Training config file:arg.', lock_config=True)
  flags.DEFINE_string('topology', None, "TPU topology, e.g. 'v5e:4x4', 'v5p:4x4x4', 'v6e:2x2'.")
  flags.DEFINE_integer('num_slices', 1, 'Number of slices (multislice, data parallel).')
  flags.DEFINE_integer('num_classes', None, 'Classes of the head; default: from the dataset name.')
  flags.DEFINE_bool('json', False, 'Print the report as one JSON object.')
  flags.DEFINE_integer(
      'vae_image_size', 0, 'Compile the Stable Diffusion VAE encoding (and decoding) N x N images.'
  )
  flags.DEFINE_integer('vae_batch', 64, 'Images per VAE call, split over the chips.')
  flags.DEFINE_enum('vae_dtype', 'bfloat16', ['float32', 'bfloat16'], 'VAE compute dtype.')
  flags.mark_flags_as_required(['topology'])


if __name__ == '__main__':
  _define_flags()
  cli.run(main)
