"""Examples/s of the input pipeline alone and of the train step, for a training config.

  python bench/train_throughput.py --config=configs/pit.py:fashion_mnist --steps=50

The pipeline should be several times (target: >= 5x) faster than the step so that it never
starves the accelerator. Compile time is reported apart. The process is set up as
vit_jax.main sets it up (tcmalloc, config.cpu_devices); minor page faults per step show
whether the allocator keeps XLA's temporaries mapped (VIT_JAX_TCMALLOC=0 to compare).
"""
import os
import resource
import time

from absl import app
from absl import flags
from ml_collections import config_flags

config_flags.DEFINE_config_file('config', None, 'Training config file:arg.', lock_config=True)
flags.DEFINE_integer('steps', 50, 'Timed batches / steps (after one warm-up).')
FLAGS = flags.FLAGS


def main(argv):
  del argv
  from vit_jax import host_runtime  # pylint: disable=g-import-not-at-top
  host_runtime.reexec_with_tcmalloc()
  host_runtime.set_cpu_devices(FLAGS.config.cpu_devices)
  import jax  # pylint: disable=g-import-not-at-top
  from vit_jax import dispatch, input_pipeline, optim, parallel, train
  config = FLAGS.config
  print(f'cpus: {os.cpu_count()}  load average: {os.getloadavg()}  devices: '
        f'{jax.device_count()}')

  data = input_pipeline.get_data(config, 'train')
  next(data)
  start = time.perf_counter()
  for _ in range(FLAGS.steps):
    batch = next(data)
  pipeline_rate = FLAGS.steps * config.batch / (time.perf_counter() - start)

  mesh = parallel.create_mesh(config.mesh)
  num_classes = input_pipeline.get_dataset_info(config, config.pp.train)['num_classes']
  model = train.make_model(config, num_classes)
  tx, schedule = optim.make_optimizer(config)
  image_shape = (config.pp.crop, config.pp.crop, config.pp.channels)
  with jax.set_mesh(mesh):
    _, shardings = train.abstract_train_state(config, model, tx, mesh, image_shape)
    state = train.create_train_state(config, model, tx, shardings, image_shape)
    step = jax.jit(train.make_train_step(model, tx, schedule, config, num_classes),
                   in_shardings=(shardings, parallel.batch_sharding(mesh)),
                   donate_argnums=0)
    batch = parallel.global_batch(batch, mesh)
    start = time.perf_counter()
    step = step.lower(state, batch).compile()
    compile_s = time.perf_counter() - start
    state, metrics = step(state, batch)
    jax.block_until_ready(metrics)
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    start = time.perf_counter()
    limit_dispatch = dispatch.DispatchLimiter()  # as the train loop: unbounded can deadlock
    for _ in range(FLAGS.steps):
      state, metrics = step(state, batch)
      limit_dispatch(metrics['loss'])
    jax.block_until_ready(metrics)
    step_rate = FLAGS.steps * config.batch / (time.perf_counter() - start)
    faults = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults) / FLAGS.steps
  print(f'{config.model.model_name} on {config.dataset} {config.pp.crop}x{config.pp.crop}, '
        f'batch {config.batch}:')
  print(f'  input pipeline alone: {pipeline_rate:9.0f} examples/s')
  print(f'  train step:           {step_rate:9.0f} examples/s (compile {compile_s:.1f} s, '
        f'{jax.device_count()} devices, {faults:.0f} page faults/step, tcmalloc '
        f'{"on" if host_runtime.tcmalloc_loaded() else "off"})')
  print(f'  pipeline / step:      {pipeline_rate / step_rate:9.1f}x')


if __name__ == '__main__':
  app.run(main)
