"""Examples/s of a training config's train step, as the run executes it, and of its input.

  python bench/train_throughput.py --config=configs/pit.py:fashion_mnist --steps=300

Prints the host probe (bench/host_probe.py) first, so figures from different hosts of one
kind can be compared. The process is set up as vit_jax.main sets it up (tcmalloc,
config.cpu_devices and the XLA:CPU flags that go with one device per core), and the step is
the run's own: `steps.jit_train_step`, which with config.pp.on_device gathers its batch from
the device copy of the train split (the README's main job) and otherwise takes host batches.

Rows:
- `input pipeline alone`: the host tf.data pipeline's batches/s (not used by an on-device run).
- `train step, fixed batch`: the compiled step on one host batch again and again (upper bound).
- `train step, as the run`: on-device: the step gathering its own batches; host: each step
  fed the next tf.data batch, as the train loop does.
Compile time is reported apart. Minor page faults per step show whether the allocator keeps
XLA's temporaries mapped (VIT_JAX_TCMALLOC=0 to compare).
"""

import os
import resource
import time

from absl import app
from absl import flags
import host_probe  # bench/host_probe.py, beside this file
from ml_collections import config_flags

config_flags.DEFINE_config_file('config', None, 'Training config file:arg.', lock_config=True)
flags.DEFINE_integer('steps', 100, 'Timed batches / steps (after warm-up).')
FLAGS = flags.FLAGS


def _timed_steps(step, state, batches, steps, extra=()):
  """Runs `steps` steps as the train loop does (at most 8 in flight); (state, seconds)."""
  import jax

  from vit_jax.runtime import step_queue

  limit_dispatch = step_queue.DispatchLimiter()  # as the train loop: unbounded can deadlock
  start = time.perf_counter()
  for _ in range(steps):
    state, metrics = step(state, next(batches), *extra)
    limit_dispatch(metrics['loss'])
  jax.block_until_ready(metrics)
  return state, time.perf_counter() - start


def main(argv):
  del argv
  from vit_jax.runtime import host_setup

  host_setup.reexec_with_tcmalloc()
  print(host_probe.line())
  host_setup.set_cpu_devices(FLAGS.config.cpu_devices)
  import itertools

  import jax
  import jax.numpy as jnp

  from vit_jax import input_pipeline
  from vit_jax import objectives
  from vit_jax import train
  from vit_jax.datasets import device_input
  from vit_jax.runtime import partitioning as parallel
  from vit_jax.training import optim
  from vit_jax.training import steps

  config = FLAGS.config
  print(f'devices: {jax.device_count()}  XLA_FLAGS: {os.environ.get("XLA_FLAGS", "")}')

  data = input_pipeline.get_data(config, 'train')
  next(data)
  start = time.perf_counter()
  for _ in range(FLAGS.steps):
    host_batch = next(data)
  pipeline_rate = FLAGS.steps * config.batch / (time.perf_counter() - start)

  mesh = parallel.create_mesh(config.mesh)
  num_classes = input_pipeline.get_dataset_info(config, config.pp.train)['num_classes']
  model = train.make_model(config, num_classes)
  tx, schedule = optim.make_optimizer(config)
  image_shape = (config.pp.crop, config.pp.crop, config.pp.channels)
  on_device = device_input.enabled(config)
  with jax.set_mesh(mesh):
    _, shardings = steps.abstract_train_state(config, model, tx, mesh, image_shape)
    state = steps.create_train_state(config, model, tx, shardings, image_shape)
    fixed = parallel.global_batch(host_batch, mesh)
    plain = steps.compile_train_step(
        steps.jit_train_step(config, model, tx, schedule, num_classes, shardings, mesh),
        state,
        fixed,
    )
    if on_device:
      extra = (device_input.load(config, mesh)[0],)
      empty = parallel.global_batch({}, mesh)
      start = time.perf_counter()
      run_step = steps.compile_train_step(
          steps.jit_train_step(
              config, model, tx, schedule, num_classes, shardings, mesh, on_device=True
          ),
          state,
          empty,
          *extra,
      )
      run_batches = itertools.repeat(empty)
    else:
      extra = ()
      start = time.perf_counter()
      run_step = plain
      run_batches = (parallel.global_batch(b, mesh) for b in data)
    compile_s = time.perf_counter() - start
    state, _ = _timed_steps(plain, state, itertools.repeat(fixed), 10)  # warm-up
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    state, fixed_s = _timed_steps(plain, state, itertools.repeat(fixed), FLAGS.steps)
    faults = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults) / FLAGS.steps
    state, _ = _timed_steps(run_step, state, run_batches, 10, extra)  # warm-up
    state, run_s = _timed_steps(run_step, state, run_batches, FLAGS.steps, extra)
    dropout_steps = objectives.patch_dropout_steps(config)
    if dropout_steps:  # the rows above ran the first steps; now those from the switch on
      state['step'] = jax.device_put(
          jnp.asarray(dropout_steps, state['step'].dtype), state['step'].sharding
      )
      state, _ = _timed_steps(run_step, state, run_batches, 10, extra)  # warm-up
      state, full_s = _timed_steps(run_step, state, run_batches, FLAGS.steps, extra)
  fixed_rate = FLAGS.steps * config.batch / fixed_s
  run_rate = FLAGS.steps * config.batch / run_s
  print(
      f'{config.model.model_name} on {config.dataset} {config.pp.crop}x{config.pp.crop}, '
      f'batch {config.batch}, {jax.device_count()} devices, tcmalloc '
      f'{"on" if host_setup.tcmalloc_loaded() else "off"}:'
  )
  print(f'  input pipeline alone:   {pipeline_rate:9.0f} examples/s')
  print(f'  train step, fixed batch: {fixed_rate:8.0f} examples/s ({faults:.0f} page faults/step)')
  print(
      f'  train step, as the run:  {run_rate:8.0f} examples/s '
      f'({"on-device batches" if on_device else "tf.data batches"}, compile {compile_s:.1f} s)'
  )
  if dropout_steps:
    print(
        f'  (the rows above: steps 0..{dropout_steps - 1}, patch dropout, '
        f'{100 * (1 - config.patch_dropout.rate):.0f} % of the patch tokens)'
    )
    print(
        f'  train step, as the run, every token (steps {dropout_steps}..): '
        f'{FLAGS.steps * config.batch / full_s:8.0f} examples/s'
    )


if __name__ == '__main__':
  app.run(main)
