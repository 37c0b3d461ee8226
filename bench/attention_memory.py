"""Memory and speed of the attention schedules, and a PiT-T train step at 224x224.

  XLA_FLAGS=--xla_force_host_platform_device_count=8 python bench/attention_memory.py
  XLA_FLAGS=--xla_force_host_platform_device_count=8 python bench/attention_memory.py \
      --pit_step=blockwise   # or ring: one PiT-T train step on one 224x224 image

Tables: forward+backward temporary bytes (XLA's compiled memory analysis, per device) of
each schedule as L grows; per-device bytes of the sharded schedules for seq axis sizes 1-8;
measured step time and peak RSS.
"""

import os
import resource
import time

from absl import app
from absl import flags

flags.DEFINE_list(
    'lengths',
    ['1024', '2048', '4096', '8192', '16384', '32768', '50176'],
    'Sequence lengths for the memory table.',
)
flags.DEFINE_integer('timing_length', 4096, 'Sequence length of the timed fwd+bwd.')
flags.DEFINE_enum(
    'pit_step',
    '',
    ['', 'blockwise', 'ring'],
    'Run one PiT-T train step at 224x224 with this schedule.',
)
flags.DEFINE_integer('block_size', 512, 'Key block size.')
FLAGS = flags.FLAGS
GIB = 2**30


def _rss_gib():
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def memory_tables():
  from vit_jax.perf import attention_memory

  lengths = [int(x) for x in FLAGS.lengths]
  impls = ('dense', 'blockwise', 'ring', 'allgather', 'ulysses')
  print(
      '\nForward+backward temporary memory per device (GiB), batch 1, 3 heads x 64, '
      f'block {FLAGS.block_size}; sharded schedules on 1 device'
  )
  print('| L | ' + ' | '.join(impls) + ' | blockwise growth |')
  print('|---' * (len(impls) + 2) + '|')
  previous = None
  for length in lengths:
    row = [
        attention_memory.fwd_bwd_temp_bytes(impl, length, block_size=FLAGS.block_size)
        for impl in impls
    ]
    growth = f'x{row[1] / previous:.2f}' if previous else ''
    previous = row[1]
    print(f'| {length} | ' + ' | '.join(f'{b / GIB:.3f}' for b in row) + f' | {growth} |')

  length = lengths[-1]
  print(
      f'\nPer-device temporary memory (GiB) at L = {length} by seq axis size '
      '(ulysses with 24 heads x 8 so that heads divide)'
  )
  print('| seq devices | ring | allgather | ulysses (24 heads x 8) |')
  print('|---|---|---|---|')
  base = None
  for devices in (1, 2, 4, 8):
    ring = attention_memory.fwd_bwd_temp_bytes(
        'ring', length, devices=devices, block_size=FLAGS.block_size
    )
    gather = attention_memory.fwd_bwd_temp_bytes(
        'allgather', length, devices=devices, block_size=FLAGS.block_size
    )
    ulysses = attention_memory.fwd_bwd_temp_bytes(
        'ulysses', length, heads=24, head_dim=8, devices=devices, block_size=FLAGS.block_size
    )
    base = base or ring
    print(
        f'| {devices} | {ring / GIB:.3f} ({ring / base:.3f} of 1 device) | '
        f'{gather / GIB:.3f} | {ulysses / GIB:.3f} |'
    )


def timing_table():
  import jax
  import jax.numpy as jnp

  from vit_jax import attention
  from vit_jax.perf import attention_memory

  length = FLAGS.timing_length
  q = jax.random.normal(jax.random.PRNGKey(0), (1, length, 3, 64))
  print(
      f'\nForward+backward time at L = {length} (3 heads x 64), 8 simulated devices share '
      f'{os.cpu_count()} cores'
  )
  print('| schedule | seq devices | ms |')
  print('|---|---|---|')
  for impl, devices in (
      ('dense', 1),
      ('blockwise', 1),
      ('ring', 8),
      ('allgather', 8),
      ('ulysses', 1),
  ):
    grad = jax.jit(
        jax.grad(
            lambda q, k, v: jnp.sum(
                attention.dot_product_attention(q, k, v, impl=impl, block_size=FLAGS.block_size)
            ),
            argnums=(0, 1, 2),
        )
    )
    with jax.set_mesh(attention_memory.seq_mesh(devices)):
      jax.block_until_ready(grad(q, q, q))
      start = time.perf_counter()
      jax.block_until_ready(grad(q, q, q))
    print(f'| {impl} | {devices} | {(time.perf_counter() - start) * 1e3:.0f} |')


def pit_step(impl):
  """One PiT-T train step (forward, backward, AdamW update) on one 224x224 image."""
  import jax
  import jax.numpy as jnp
  import optax

  from vit_jax.configs import models as model_configs
  from vit_jax.models import VisionTransformer
  from vit_jax.perf import attention_memory

  config = model_configs.MODEL_CONFIGS['PiT-T'].to_dict()
  config['transformer']['attention'] = {'impl': impl, 'block_size': FLAGS.block_size}
  model = VisionTransformer(num_classes=1000, **config)
  devices = 8 if impl == 'ring' else 1
  image = jnp.ones((1, 224, 224, 3))
  label = jax.nn.one_hot(jnp.array([3]), 1000)
  tx = optax.adamw(1e-3)
  with jax.set_mesh(attention_memory.seq_mesh(devices)):
    params = jax.jit(lambda: model.init(jax.random.PRNGKey(0), image, train=False))()['params']
    opt_state = tx.init(params)

    def step(params, opt_state):
      loss, grads = jax.value_and_grad(
          lambda p: optax.softmax_cross_entropy(
              model.apply({'params': p}, image, train=False), label
          ).mean()
      )(params)
      updates, opt_state = tx.update(grads, opt_state, params)
      return optax.apply_updates(params, updates), opt_state, loss

    start = time.perf_counter()
    compiled = jax.jit(step, donate_argnums=(0, 1)).lower(params, opt_state).compile()
    compile_s = time.perf_counter() - start
    temp = compiled.memory_analysis().temp_size_in_bytes
    start = time.perf_counter()
    params, opt_state, loss = compiled(params, opt_state)
    loss = float(loss)
    step_s = time.perf_counter() - start
  print(
      f'\nPiT-T train step, one 224x224 image = 50,176 pixel tokens (+ class token), '
      f'{impl} over {devices} device(s): loss {loss:.4f}, compile {compile_s:.0f} s, '
      f'step {step_s:.0f} s, compiled temp {temp / GIB:.2f} GiB per device, '
      f'peak RSS {_rss_gib():.2f} GiB'
  )


def main(argv):
  del argv
  if FLAGS.pit_step:
    pit_step(FLAGS.pit_step)
    return
  memory_tables()
  timing_table()
  print(f'\npeak RSS {_rss_gib():.2f} GiB')


if __name__ == '__main__':
  app.run(main)
