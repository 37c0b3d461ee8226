"""Compile time for a TPU topology, measured on this machine (libtpu, no TPU).

  python bench/tpu_compile_time.py --topology=v5e:2x2

1. The patch embedding's gradient alone, ViT-B/16 shapes: nn.Conv(kernel=stride=16) against
   the reshape + matmul of vit_jax/models/patch_embedding.py (same parameters, same numbers).
2. ViT-B/16's real train step (configs/vit.py:b16,imagenet2012 at 224x224) as the depth
   grows: unscanned blocks (compile time grows with every layer) against
   transformer.scan_layers (one block compiled, whatever the depth).
Wall-clock seconds of `lower(...).compile()`; the machine's other load adds to every figure.
"""

import time

from absl import app
from absl import flags

flags.DEFINE_string('topology', 'v5e:2x2', 'TPU topology to compile for.')
flags.DEFINE_list('unscanned_depths', ['1', '2', '4'], 'Depths compiled without scan.')
flags.DEFINE_list('scanned_depths', ['1', '12', '24'], 'Depths compiled with scan_layers.')
flags.DEFINE_integer('batch', 32, 'Global batch of the step.')
FLAGS = flags.FLAGS


def _seconds(fn):
  start = time.time()
  fn()
  return time.time() - start


def embedding_gradients(devices):
  """Compile seconds of d(loss)/d(params, images) of each patch embedding form."""
  import flax.linen as nn
  import jax
  import jax.numpy as jnp
  import numpy as np

  from vit_jax.models import patch_embedding

  mesh = jax.sharding.Mesh(np.array(devices), ('data',))
  batch = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec('data'))
  images = jax.ShapeDtypeStruct((FLAGS.batch, 224, 224, 3), jnp.float32, sharding=batch)
  forms = {
      'nn.Conv 16x16 stride 16': nn.Conv(
          768, (16, 16), strides=(16, 16), padding='VALID', name='embedding'
      ),
      'reshape + matmul': patch_embedding.PatchEmbedding(768, (16, 16), name='embedding'),
  }
  for name, module in forms.items():
    params = jax.eval_shape(module.init, jax.random.PRNGKey(0), images)

    def loss(p, x, module=module):
      return jnp.sum(module.apply(p, x) ** 2)

    grad = jax.jit(jax.grad(loss, argnums=(0, 1)))
    with jax.set_mesh(mesh):
      seconds = _seconds(lambda: grad.lower(params, images).compile())
    print(f'| {name} | {seconds:.1f} |')


def train_step_by_depth(devices):
  from vit_jax import aot
  from vit_jax.configs import vit

  runs = [(int(d), False) for d in FLAGS.unscanned_depths]
  runs += [(int(d), True) for d in FLAGS.scanned_depths]
  for depth, scan in runs:
    config = vit.get_config('b16,imagenet2012')
    with config.unlocked():
      config.pp.crop = 224
      config.batch = config.batch_eval = FLAGS.batch
      config.accum_steps = 1
      config.model.transformer.num_layers = depth
      config.model.transformer.scan_layers = scan
    seconds = _seconds(lambda: aot.compile_steps(config, devices, 1000))
    print(f'| {depth} | {"scan_layers" if scan else "unscanned"} | {seconds:.1f} |')


def main(argv):
  del argv
  from vit_jax import aot

  devices = aot.topology_devices(FLAGS.topology)
  print(f'Patch embedding gradient, ViT-B/16 shapes, batch {FLAGS.batch} on {FLAGS.topology}')
  print('| form | compile s |\n|---|---|')
  embedding_gradients(devices)
  print(f'\nViT-B/16 train + eval step compile on {FLAGS.topology}, batch {FLAGS.batch}')
  print('| layers | blocks | compile s |\n|---|---|---|')
  train_step_by_depth(devices)


if __name__ == '__main__':
  app.run(main)
