"""DiT speed on this CPU: forward, train step and 250-step sampling, vit_jax against the original.

  python bench/dit_throughput.py --models=DiT-S/2,DiT-S/1 \
      --dit_source=/path/to/facebookresearch/DiT --torch_python=/path/to/venv/bin/python

Every model runs on 32x32x4 latents (256x256 images through the VAE), 1000 classes, learned
sigma, float32, batch --batch. The train step is DiT's: the hybrid loss (MSE + VB) at random
timesteps of the 1000-step process, AdamW lr 1e-4 without weight decay. Sampling is DiT's
sample.py: ancestral sampling respaced to --sample_steps, classifier-free guidance at
--cfg_scale (the batch doubled with the null class), --sample_batch samples per call.

The reference side runs facebookresearch/DiT's own `models.py` and `diffusion/` from a
checkout (`--dit_source`) in a separate interpreter with torch and timm (`--torch_python`);
they are never dependencies of vit_jax. Without them only vit_jax is timed. Both sides use
every core: torch with one intra-op thread per core, vit_jax with one CPU device per core and
the batch split over them (as training on a CPU host does; vit_jax/runtime/host_setup.py).
Compile time is reported apart from the timed steps. vit_jax's DiT runs with the layers of the
CPU recipe (`grads_as_dots`, as configs/dit.py's CPU presets train) unless --nograds_as_dots.
"""

import os
import subprocess
import time

from absl import app
from absl import flags
import host_probe  # bench/host_probe.py, beside this file

flags.DEFINE_list('models', ['DiT-S/2', 'DiT-S/1'], 'Names in configs.models.MODEL_CONFIGS.')
flags.DEFINE_integer('batch', 8, 'Latents per forward pass and train step.')
flags.DEFINE_integer('latent_size', 32, 'Latent height and width (256 px images / 8).')
flags.DEFINE_integer('steps', 5, 'Timed forward and train steps after one warm-up.')
flags.DEFINE_list('sample_models', ['DiT-S/2'], 'Models whose sampling is timed.')
flags.DEFINE_integer('sample_steps', 250, 'Sampling steps (the respacing of the process).')
flags.DEFINE_integer('sample_batch', 2, 'Samples per sampling call (doubled by guidance).')
flags.DEFINE_float('cfg_scale', 4.0, 'Classifier-free guidance scale (sample.py default).')
flags.DEFINE_bool(
    'grads_as_dots', True, "vit_jax's CPU recipe: the backward written for XLA:CPU (same numbers)."
)
flags.DEFINE_string('dit_source', '', 'A facebookresearch/DiT checkout (models.py, diffusion/).')
flags.DEFINE_string('torch_python', 'python3', 'Interpreter with torch and timm.')
FLAGS = flags.FLAGS

NUM_CLASSES = 1000
CHANNELS = 4


def _time_calls(fn, calls):
  """Seconds per call of `fn` over exactly `calls` calls, after one warm-up call."""
  fn()
  start = time.perf_counter()
  for _ in range(calls):
    fn()
  return (time.perf_counter() - start) / calls


def _report(side, name, what, per_s, seconds, extra=''):
  print(
      f'{side:8s} {name:8s} {what:8s} {per_s:8.3f} /s  ({seconds * 1e3:8.0f} ms/call{extra})',
      flush=True,
  )


def _data_parallel(batch):
  """A one-axis mesh over as many CPU devices as divide `batch`, and its batch sharding."""
  import jax

  devices = jax.device_count() if batch % jax.device_count() == 0 else 1
  mesh = jax.make_mesh(
      (devices,),
      ('data',),
      axis_types=(jax.sharding.AxisType.Auto,),
      devices=jax.devices()[:devices],
  )
  split = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec('data'))
  replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  return split, replicated


def bench_vit_jax(name, sample):
  import jax
  import jax.numpy as jnp
  import optax

  from vit_jax import diffusion
  from vit_jax.configs import models as model_configs
  from vit_jax.diffusion import guidance
  from vit_jax.models import dit

  model = dit.from_config(
      model_configs.MODEL_CONFIGS[name], NUM_CLASSES, grads_as_dots=FLAGS.grads_as_dots
  )
  shape = (FLAGS.batch, FLAGS.latent_size, FLAGS.latent_size, CHANNELS)
  key = jax.random.key(0)
  x = jax.random.normal(key, shape)
  t = jnp.arange(FLAGS.batch, dtype=jnp.int32) * 997 % 1000
  y = jnp.arange(FLAGS.batch, dtype=jnp.int32) % NUM_CLASSES
  params = jax.jit(lambda: model.init(key, x, t, y, train=False))()['params']
  split, replicated = _data_parallel(FLAGS.batch)
  params = jax.device_put(params, replicated)
  x, t, y = jax.device_put((x, t, y), split)

  forward = jax.jit(lambda p, x, t, y: model.apply({'params': p}, x, t, y, train=False))
  start = time.perf_counter()
  forward = forward.lower(params, x, t, y).compile()
  compile_s = time.perf_counter() - start
  seconds = _time_calls(lambda: forward(params, x, t, y).block_until_ready(), FLAGS.steps)
  _report(
      'vit_jax', name, 'forward', FLAGS.batch / seconds, seconds, f', compile {compile_s:.1f} s'
  )

  process = diffusion.create_diffusion('')
  tx = optax.adamw(1e-4, weight_decay=0.0)

  def train_step(p, opt_state, x, y, rng):
    def loss_fn(p):
      t = jax.random.randint(jax.random.fold_in(rng, 0), x.shape[:1], 0, process.num_timesteps)
      noise = jax.random.normal(jax.random.fold_in(rng, 1), x.shape)
      model_fn = lambda xt, tt: model.apply(
          {'params': p}, xt, tt, y, train=True, rngs={'dropout': rng}
      )
      return process.training_losses(model_fn, x, t, noise)['loss'].mean()

    loss, grads = jax.value_and_grad(loss_fn)(p)
    updates, opt_state = tx.update(grads, opt_state, p)
    return optax.apply_updates(p, updates), opt_state, loss

  state = [params, tx.init(params)]
  rng = jax.random.key(2)
  step = jax.jit(train_step, donate_argnums=(0, 1))
  start = time.perf_counter()
  step = step.lower(state[0], state[1], x, y, rng).compile()
  compile_s = time.perf_counter() - start

  def run():
    state[0], state[1], loss = step(state[0], state[1], x, y, rng)
    loss.block_until_ready()

  seconds = _time_calls(run, FLAGS.steps)
  _report('vit_jax', name, 'train', FLAGS.batch / seconds, seconds, f', compile {compile_s:.1f} s')

  if not sample:
    return
  sampler = guidance.make_sampler(
      model,
      diffusion.create_diffusion(str(FLAGS.sample_steps)),
      shape[1:],
      cfg_scale=FLAGS.cfg_scale,
      guide_channels=3,
  )
  labels = jnp.arange(FLAGS.sample_batch, dtype=jnp.int32) % NUM_CLASSES
  params = jax.device_get(state[0])
  start = time.perf_counter()
  sampler(params, labels, key).block_until_ready()  # compiles, then samples once
  first_s = time.perf_counter() - start
  start = time.perf_counter()
  sampler(params, labels, key).block_until_ready()
  seconds = time.perf_counter() - start
  _report(
      'vit_jax',
      name,
      'sample',
      FLAGS.sample_batch / seconds,
      seconds,
      f', {FLAGS.sample_steps} steps, cfg {FLAGS.cfg_scale}, first call {first_s:.1f} s',
  )


_TORCH_SCRIPT = r"""
import sys, time, torch
source, name, batch, size, steps, sample, sample_steps, sample_batch, cfg = sys.argv[1:10]
sys.path.insert(0, source)
from models import DiT, DiT_models
from diffusion import create_diffusion
batch, size, steps, sample_steps, sample_batch = map(int, (batch, size, steps, sample_steps,
                                                           sample_batch))
cfg = float(cfg)
torch.manual_seed(0)

def timed(fn, calls):
  fn()
  start = time.perf_counter()
  for _ in range(calls):
    fn()
  return (time.perf_counter() - start) / calls

def report(what, per_s, seconds, extra=''):
  print(f'{"DiT/torch":8s} {name:8s} {what:8s} {per_s:8.3f} /s  ({seconds * 1e3:8.0f} ms/call'
        f'{extra})', flush=True)

if name in DiT_models:
  model = DiT_models[name](input_size=size, num_classes=1000)
else:  # patch 1 (pixel tokens) is not among the original's names: its S/B/L/XL widths
  widths = {'S': (12, 384, 6), 'B': (12, 768, 12), 'L': (24, 1024, 16), 'XL': (28, 1152, 16)}
  depth, hidden, heads = widths[name.split('-')[1].split('/')[0]]
  model = DiT(input_size=size, patch_size=int(name.split('/')[1]), hidden_size=hidden,
              depth=depth, num_heads=heads, num_classes=1000)
x = torch.randn(batch, 4, size, size)
t = torch.arange(batch) * 997 % 1000
y = torch.arange(batch) % 1000
model.eval()
with torch.inference_mode():
  seconds = timed(lambda: model(x, t, y), steps)
report('forward', batch / seconds, seconds, f', torch {torch.__version__}, '
       f'{torch.get_num_threads()} threads')

model.train()
process = create_diffusion(timestep_respacing='')
opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0)
def train_step():
  tt = torch.randint(0, process.num_timesteps, (batch,))
  loss = process.training_losses(model, x, tt, dict(y=y))['loss'].mean()
  opt.zero_grad()
  loss.backward()
  opt.step()
seconds = timed(train_step, steps)
report('train', batch / seconds, seconds)

if sample == '1':
  model.eval()
  sampler = create_diffusion(str(sample_steps))
  def run():
    z = torch.randn(sample_batch, 4, size, size)
    z = torch.cat([z, z], 0)
    labels = torch.arange(sample_batch) % 1000
    labels = torch.cat([labels, torch.full_like(labels, 1000)], 0)
    with torch.inference_mode():
      sampler.p_sample_loop(model.forward_with_cfg, z.shape, z, clip_denoised=False,
                            model_kwargs=dict(y=labels, cfg_scale=cfg), progress=False,
                            device='cpu')
  seconds = timed(run, 1)
  report('sample', sample_batch / seconds, seconds, f', {sample_steps} steps, cfg {cfg}')
"""


def bench_torch(name, sample):
  """facebookresearch/DiT timed in `--torch_python` (a separate interpreter)."""
  cmd = [
      FLAGS.torch_python,
      '-c',
      _TORCH_SCRIPT,
      FLAGS.dit_source,
      name,
      str(FLAGS.batch),
      str(FLAGS.latent_size),
      str(FLAGS.steps),
      '1' if sample else '0',
      str(FLAGS.sample_steps),
      str(FLAGS.sample_batch),
      str(FLAGS.cfg_scale),
  ]
  result = subprocess.run(cmd, capture_output=True, text=True, check=False)
  if result.returncode:
    last = result.stderr.strip().splitlines()[-1] if result.stderr.strip() else '?'
    print(f'DiT/torch {name}: not measured ({FLAGS.torch_python}: {last})')
  else:
    print(result.stdout.strip(), flush=True)


def main(argv):
  del argv
  from vit_jax.runtime import host_setup

  os.environ.setdefault('JAX_PLATFORMS', 'cpu')  # a CPU bench: skip probing for a TPU
  host_setup.set_cpu_devices(-1)  # one CPU device per core, before JAX starts
  print(host_probe.line())
  print(
      f'latents {FLAGS.latent_size}x{FLAGS.latent_size}x{CHANNELS}, batch {FLAGS.batch}, '
      f'{NUM_CLASSES} classes, float32; sampling batch {FLAGS.sample_batch}; vit_jax '
      f'grads_as_dots={FLAGS.grads_as_dots}'
  )
  for name in FLAGS.models:
    sample = name in FLAGS.sample_models
    bench_vit_jax(name, sample)
    if FLAGS.dit_source:
      bench_torch(name, sample)


if __name__ == '__main__':
  app.run(main)
