"""Images/s of the jitted forward pass and of a train step for a named model config.

  python bench/throughput.py --model=ViT-B_16 --batch=8 --image_size=224 --steps=5

Compile time is reported apart from the timed steps. With `--timm=vit_base_patch16_224`
the same run also times timm's forward pass on the same machine, in `--timm_python` (an
interpreter with torch and timm installed; they are never dependencies of vit_jax).

Both sides use every core: torch with one intra-op thread per core, vit_jax as it trains on a
CPU host, one device per core (`--cpu_devices=-1`, config.cpu_devices; with its XLA flags,
vit_jax/runtime/host_setup.py) and the batch split over them. `--cpu_devices=0` times one device
using all cores instead.
"""

import os
import time

from absl import app
from absl import flags
import host_probe  # bench/host_probe.py, beside this file

flags.DEFINE_string('model', 'ViT-B_16', 'Name in configs.models.MODEL_CONFIGS.')
flags.DEFINE_integer('batch', 8, 'Images per step.')
flags.DEFINE_integer('image_size', 224, 'Square input resolution.')
flags.DEFINE_integer('num_classes', 1000, 'Head size.')
flags.DEFINE_integer('steps', 5, 'Timed steps after compilation and one warm-up step.')
flags.DEFINE_enum('dtype', 'float32', ['float32', 'bfloat16'], 'Compute dtype.')
flags.DEFINE_bool('train_step', True, 'Also time a train step (SGD + momentum).')
flags.DEFINE_string('timm', '', 'timm model name to time too (needs --timm_python).')
flags.DEFINE_string('timm_python', 'python3', 'Python interpreter that has torch and timm.')
flags.DEFINE_integer(
    'cpu_devices', -1, 'CPU devices as config.cpu_devices: -1 one per core, 0 JAX default (one).'
)
FLAGS = flags.FLAGS


def _time_steps(fn, steps):
  """Runs `fn` once to warm up, then times exactly `steps` calls."""
  fn()
  start = time.perf_counter()
  for _ in range(steps):
    fn()
  return (time.perf_counter() - start) / steps


def bench_vit_jax():
  import jax
  import jax.numpy as jnp
  import optax

  from vit_jax.configs import models as model_configs
  from vit_jax.models import VisionTransformer

  config = model_configs.MODEL_CONFIGS[FLAGS.model]
  model = VisionTransformer(num_classes=FLAGS.num_classes, dtype=jnp.dtype(FLAGS.dtype), **config)
  images = jax.random.normal(
      jax.random.PRNGKey(0), (FLAGS.batch, FLAGS.image_size, FLAGS.image_size, 3)
  )
  labels = jax.nn.one_hot(jnp.arange(FLAGS.batch) % FLAGS.num_classes, FLAGS.num_classes)
  params = jax.jit(lambda x: model.init(jax.random.PRNGKey(1), x, train=False))(images)
  params = params['params']
  # Data-parallel over the CPU devices: the batch split, the parameters on every device.
  devices = jax.device_count() if FLAGS.batch % jax.device_count() == 0 else 1
  mesh = jax.make_mesh(
      (devices,),
      ('data',),
      axis_types=(jax.sharding.AxisType.Auto,),
      devices=jax.devices()[:devices],
  )
  split = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec('data'))
  params = jax.device_put(params, jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec()))
  images, labels = jax.device_put((images, labels), split)
  print(f'vit_jax on {devices} CPU device(s), XLA_FLAGS={os.environ.get("XLA_FLAGS", "")!r}')

  forward = jax.jit(lambda p, x: model.apply({'params': p}, x, train=False))
  start = time.perf_counter()
  forward = forward.lower(params, images).compile()
  compile_s = time.perf_counter() - start
  step_s = _time_steps(lambda: forward(params, images).block_until_ready(), FLAGS.steps)
  print(
      f'vit_jax {FLAGS.model} forward  {FLAGS.image_size}px batch {FLAGS.batch} '
      f'{FLAGS.dtype}: {FLAGS.batch / step_s:8.2f} img/s  '
      f'({step_s * 1e3:.0f} ms/step, compile {compile_s:.1f} s)'
  )

  if not FLAGS.train_step:
    return
  tx = optax.sgd(0.01, momentum=0.9)

  def train_step(p, opt_state, x, y, rng):
    def loss_fn(p):
      logits = model.apply({'params': p}, x, train=True, rngs={'dropout': rng})
      return optax.softmax_cross_entropy(logits.astype(jnp.float32), y).mean()

    loss, grads = jax.value_and_grad(loss_fn)(p)
    updates, opt_state = tx.update(grads, opt_state, p)
    return optax.apply_updates(p, updates), opt_state, loss

  opt_state = tx.init(params)
  rng = jax.random.PRNGKey(2)
  step = jax.jit(train_step, donate_argnums=(0, 1))
  start = time.perf_counter()
  step = step.lower(params, opt_state, images, labels, rng).compile()
  compile_s = time.perf_counter() - start
  state = [params, opt_state]

  def run():
    state[0], state[1], loss = step(state[0], state[1], images, labels, rng)
    loss.block_until_ready()

  step_s = _time_steps(run, FLAGS.steps)
  print(
      f'vit_jax {FLAGS.model} train    {FLAGS.image_size}px batch {FLAGS.batch} '
      f'{FLAGS.dtype}: {FLAGS.batch / step_s:8.2f} img/s  '
      f'({step_s * 1e3:.0f} ms/step, compile {compile_s:.1f} s)'
  )


_TIMM_SCRIPT = """
import sys, time, torch, timm
name, batch, size, steps = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
model = timm.create_model(name, pretrained=False).eval()
x = torch.randn(batch, 3, size, size)
with torch.inference_mode():
  model(x)
  start = time.perf_counter()
  for _ in range(steps):
    model(x)
  step_s = (time.perf_counter() - start) / steps
print(f'timm    {name} forward {size}px batch {batch} float32: {batch / step_s:8.2f} img/s  '
      f'({step_s * 1e3:.0f} ms/step, torch {torch.__version__}, '
      f'{torch.get_num_threads()} threads)')
"""


def bench_timm():
  """Times timm in a separate interpreter: one warm-up call, then exactly --steps calls."""
  import subprocess

  cmd = [
      FLAGS.timm_python,
      '-c',
      _TIMM_SCRIPT,
      FLAGS.timm,
      str(FLAGS.batch),
      str(FLAGS.image_size),
      str(FLAGS.steps),
  ]
  result = subprocess.run(cmd, capture_output=True, text=True, check=False)
  if result.returncode:
    print(
        f'timm {FLAGS.timm}: not measured ({FLAGS.timm_python} could not run timm: '
        f'{result.stderr.strip().splitlines()[-1] if result.stderr.strip() else "?"})'
    )
  else:
    print(result.stdout.strip())


def main(argv):
  del argv
  from vit_jax.runtime import host_setup

  host_setup.set_cpu_devices(FLAGS.cpu_devices)  # before JAX starts
  print(host_probe.line())
  bench_vit_jax()
  if FLAGS.timm:
    bench_timm()


if __name__ == '__main__':
  app.run(main)
