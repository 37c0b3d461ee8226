"""Times the patch embedding (reshape + matmul) against nn.Conv(kernel=stride=patch).

  python bench/patch_embedding.py --steps=15

The two compute the same map from the same parameters (tests/test_patch_embedding.py); this
shows what each costs on this machine, forward and forward + gradient (parameters and input),
for ViT-B/16, a PiT (1x1 patches on pixels) and the R50 hybrid (1x1 patches on its stem's
feature map). Medians over `--steps` calls, the two alternated so machine load hits both.
"""

import os
import statistics
import time

from absl import app
from absl import flags

flags.DEFINE_integer('steps', 15, 'Timed calls of each function after one warm-up call.')
flags.DEFINE_integer('batch', 8, 'Images per call.')
FLAGS = flags.FLAGS
# name: (input [h, w, channels], patch, width)
CASES = {
    'ViT-B/16 224px': ((224, 224, 3), (16, 16), 768),
    'PiT-T 32px': ((32, 32, 3), (1, 1), 192),
    'R50+ViT-B/16 14x14x1024 map': ((14, 14, 1024), (1, 1), 768),
}


def main(argv):
  del argv
  import flax.linen as nn
  import jax
  import jax.numpy as jnp

  from vit_jax.models import patch_embedding

  print(f'cpus: {os.cpu_count()}  load average: {os.getloadavg()}  batch {FLAGS.batch}')
  for name, (shape, patch, width) in CASES.items():
    x = jax.random.normal(jax.random.PRNGKey(0), (FLAGS.batch,) + shape)
    modules = {
        'conv': nn.Conv(width, patch, strides=patch, padding='VALID'),
        'matmul': patch_embedding.PatchEmbedding(width, patch),
    }
    params = modules['conv'].init(jax.random.PRNGKey(1), x)['params']
    compiled, compile_s = {}, {}
    for kind, module in modules.items():
      forward = lambda p, x, m=module: m.apply({'params': p}, x)
      loss = lambda p, x, f=forward: jnp.sum(f(p, x) ** 2)
      for what, fn in (('forward', forward), ('fwd+grad', jax.grad(loss, argnums=(0, 1)))):
        start = time.perf_counter()
        compiled[kind, what] = jax.jit(fn).lower(params, x).compile()
        compile_s[kind, what] = time.perf_counter() - start
        jax.block_until_ready(compiled[kind, what](params, x))
    times = {key: [] for key in compiled}
    for _ in range(FLAGS.steps):
      for key, fn in compiled.items():
        start = time.perf_counter()
        jax.block_until_ready(fn(params, x))
        times[key].append(time.perf_counter() - start)
    for kind in modules:
      print(
          f'{name:28s} {kind:6s} '
          + '  '.join(
              f'{what} {1e3 * statistics.median(times[kind, what]):8.2f} ms '
              f'(compile {compile_s[kind, what]:.2f} s)'
              for what in ('forward', 'fwd+grad')
          )
      )


if __name__ == '__main__':
  app.run(main)
