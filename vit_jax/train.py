"""train_and_evaluate(config, workdir): the train loop on jax.jit + NamedSharding.

Everything is a deterministic function of (config, step): the data comes from
`input_pipeline.get_data(start_step=step)`, or with config.pp.on_device from the device copy
of the train split, gathered inside the step (vit_jax/datasets/device_input.py); the dropout rng is
fold_in(seed, step). A run killed at any point and restarted from its last checkpoint ends
bitwise equal to one that was never interrupted.
"""

import signal
import time

from absl import logging
from clu import parameter_overview
from clu import periodic_actions
import jax
from jax.experimental import multihost_utils
import jax.numpy as jnp
import numpy as np
import optax

from vit_jax import checkpoint
from vit_jax import config_checks
from vit_jax import errors
from vit_jax import input_pipeline
from vit_jax import metrics
from vit_jax import objectives
from vit_jax import optim
from vit_jax import paths
from vit_jax.checkpoints import orbax_state
from vit_jax.datasets import device_input
from vit_jax.models import resnet
from vit_jax.perf import profiling
from vit_jax.perf import utilization
from vit_jax.runtime import failure
from vit_jax.runtime import gcs_credentials
from vit_jax.runtime import partitioning
from vit_jax.runtime import preemption
from vit_jax.runtime import step_queue
from vit_jax.runtime import workdir as workdir_lib


def make_model(config, num_classes):
  """The model of `config.objective` (a classifier, or a masked autoencoder)."""
  return objectives.make_model(config, num_classes)


def _to_host(x):
  """A replicated (possibly multi-process) array as numpy."""
  return np.asarray(x.addressable_data(0))


def validate_config(config, mesh):
  """Errors that would otherwise surface mid-compile or hours later; see config_checks.py."""
  config_checks.validate(config, mesh)
  device_input.check(config)
  gcs_credentials.check_config(config)  # TensorFlow reads some of its gs:// paths itself
  if config.pretrained_path and not paths.exists(config.pretrained_path):
    raise errors.MissingInputError(
        f'config.pretrained_path={config.pretrained_path!r} does not exist; fix the path or '
        'set it to None to train from scratch.'
    )


def _example_scale(batch):
  """() or (w * B / max(sum(w), 1),): the mean of scale * ce is sum(w * ce) / max(sum(w), 1).

  batch['weight'] (0 for skipped undecodable images) is present only with
  config.pp.skip_undecodable; without it the loss is the plain mean, as before.
  """
  if 'weight' not in batch:
    return ()
  weight = batch['weight']
  return (weight * (weight.shape[0] / jnp.maximum(jnp.sum(weight), 1.0)),)


def make_train_step(model, tx, schedule, config, num_classes):
  """Pure (state, batch) -> (state, metrics); gradients accumulated over accum_steps.

  The metrics are the loss, the objective's loss terms (train_<name>), the gradient norm and
  the learning rate. With config.ema_decay the state's `ema_params` follow the parameters.
  """
  loss_fn = lambda dropout: objectives.make_loss_fn(model, config, num_classes, dropout)
  full_grad_fn = jax.value_and_grad(loss_fn(False), has_aux=True)
  dropout_grad_fn = jax.value_and_grad(loss_fn(True), has_aux=True)
  dropout_steps = objectives.patch_dropout_steps(config)
  accum = config.accum_steps
  ema_decay = config.get('ema_decay', 0.0)

  def train_step(state, batch):
    rng = jax.random.fold_in(jax.random.PRNGKey(config.seed), state['step'])
    params = state['params']
    grad_fn = full_grad_fn
    if dropout_steps:  # the first steps on fewer tokens: each branch its own fwd + bwd
      grad_fn = lambda *args: jax.lax.cond(
          state['step'] < dropout_steps, dropout_grad_fn, full_grad_fn, *args
      )
    if accum == 1:
      (loss, terms), grads = grad_fn(
          params, batch['image'], batch['label'], rng, *_example_scale(batch)
      )
    else:
      split = lambda x: x.reshape((-1, accum) + x.shape[1:]).swapaxes(0, 1)
      images, labels = split(batch['image']), split(batch['label'])
      scales = [split(x) for x in _example_scale(batch)]

      def micro_step(carry, i):
        out = grad_fn(
            params, images[i], labels[i], jax.random.fold_in(rng, i), *[x[i] for x in scales]
        )
        return jax.tree.map(jnp.add, carry, out), None

      zeros = jax.tree.map(
          lambda a: jnp.zeros(a.shape, a.dtype),
          jax.eval_shape(grad_fn, params, images[0], labels[0], rng, *[x[0] for x in scales]),
      )
      ((loss, terms), grads), _ = jax.lax.scan(micro_step, zeros, jnp.arange(accum))
      loss, terms, grads = jax.tree.map(lambda x: x / accum, (loss, terms, grads))
    updates, opt_state = tx.update(grads, state['opt_state'], params)
    new_params = optax.apply_updates(params, updates)
    new_state = dict(state, step=state['step'] + 1, params=new_params, opt_state=opt_state)
    if ema_decay:
      new_state['ema_params'] = jax.tree.map(
          lambda e, p: e * ema_decay + p.astype(e.dtype) * (1 - ema_decay),
          state['ema_params'],
          new_params,
      )
    return new_state, {
        'loss': loss,
        **{f'train_{k}': v for k, v in terms.items()},
        'grad_norm': optax.global_norm(grads),
        'learning_rate': schedule(state['step']),
        'stop': jnp.max(batch['stop']) if 'stop' in batch else 0,
    }

  return train_step


def jit_train_step(config, model, tx, schedule, num_classes, shardings, mesh, on_device=False):
  """The train step under jax.jit: state and batch laid out on the mesh, the state donated.

  With `on_device` (config.pp.on_device) it takes a third argument, the replicated
  device_input.DeviceData, and gathers the step's images and labels from it itself.
  """
  replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  step_fn = make_train_step(model, tx, schedule, config, num_classes)
  in_shardings = (shardings, partitioning.batch_sharding(mesh))
  if on_device:

    def step_on_device(state, batch, data):
      made = device_input.batch_at(config, data, state['step'], num_classes, mesh)
      return step_fn(state, dict(batch, **made))

    return jax.jit(
        step_on_device,
        in_shardings=in_shardings + (replicated,),
        out_shardings=(shardings, replicated),
        donate_argnums=0,
    )
  return jax.jit(
      step_fn, in_shardings=in_shardings, out_shardings=(shardings, replicated), donate_argnums=0
  )


def compile_train_step(jitted, state, batch, *more):
  """`jitted.lower(...).compile()` for the shapes, dtypes and shardings of (state, batch)
  (and the device data of an on-device step).

  The run calls the compiled object, so the program it counts FLOPs of (vit_jax/perf/utilization.py)
  is the one it runs, compiled once.
  """
  abstract = jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding, weak_type=x.weak_type),
      (state, batch) + more,
  )
  return jitted.lower(*abstract).compile()


def jit_eval_step(model, shardings, mesh, config=None):
  """The eval step under jax.jit: params as trained, batch laid out on the mesh."""
  replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  return jax.jit(
      make_eval_step(model, config),
      in_shardings=(shardings['params'], partitioning.batch_sharding(mesh)),
      out_shardings=replicated,
  )


def make_eval_step(model, config=None):
  """(params, batch) -> (metric sum, example count); see objectives.make_eval_step."""
  return objectives.make_eval_step(model, config)


def _state_from(config, tx, params):
  state = {'step': jnp.zeros([], jnp.int32), 'params': params, 'opt_state': tx.init(params)}
  if config.get('ema_decay', 0.0):
    state['ema_params'] = jax.tree.map(jnp.copy, params)
  return state


def _init_params(config, model, rng, image_shape):
  inputs = objectives.get(config).init_inputs(config, image_shape)
  return model.init(rng, *inputs, train=False)['params']


def abstract_train_state(config, model, tx, mesh, image_shape):
  """Shapes, dtypes and shardings of the train state, nothing allocated."""

  def init():
    return _state_from(
        config, tx, _init_params(config, model, jax.random.PRNGKey(config.seed), image_shape)
    )

  abstract = jax.eval_shape(init)
  shardings = partitioning.param_shardings(abstract, mesh)
  return (
      jax.tree.map(
          lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shardings
      ),
      shardings,
  )


def _patch_grid(config, image_shape):
  """(rows, columns) of patches the model sees: the position-embedding grid."""
  stem = resnet.stem_downsampling(config.model.get('resnet'))
  ph, pw = config.model.patches.size
  return image_shape[0] // stem // ph, image_shape[1] // stem // pw


def create_train_state(config, model, tx, shardings, image_shape):
  """Initial state created already sharded (jit of init with out_shardings)."""
  init = lambda rng: _init_params(config, model, rng, image_shape)
  params = jax.jit(init, out_shardings=shardings['params'])(jax.random.PRNGKey(config.seed))
  if config.pretrained_path:
    params = checkpoint.load_pretrained(
        pretrained_path=config.pretrained_path,
        init_params=multihost_utils.process_allgather(params, tiled=True),
        model_config=config.model,
        model_grid=_patch_grid(config, image_shape),
        strict=config.pretrained_strict,
    )
  return jax.jit(lambda p: _state_from(config, tx, p), out_shardings=shardings)(params)


def evaluate(config, eval_step, params, mesh):
  """(metric, examples) over every example of the test split (padded batches are masked):
  the accuracy, or for config.objective='mae' the mean reconstruction loss."""
  values, count = evaluate_metrics(config, eval_step, params, mesh)
  return values[f'eval_{objectives.eval_metric(config)}'], count


def eval_params(state):
  """The parameters evaluations use: the EMA's where the run keeps one (config.ema_decay)."""
  return state.get('ema_params', state['params'])


def evaluate_all(config, eval_step, state, step, workdir, mesh):
  """`evaluate_metrics` on the eval split, then what the objective adds (samples, FID)."""
  params = eval_params(state)
  values, count = evaluate_metrics(config, eval_step, params, mesh)
  values.update(objectives.get(config).evaluate_extra(config, params, step, workdir, mesh))
  return values, count


def evaluate_metrics(config, eval_step, params, mesh):
  """({'eval_<metric>': value, ...}, examples): `evaluate`'s metric and, with
  config.eval_flip, the single-view accuracy beside the flip-averaged one
  (objectives.make_eval_step)."""
  summed, total = 0.0, 0.0
  for batch in input_pipeline.get_data(config, 'eval'):
    s, n = eval_step(params, partitioning.global_batch(batch, mesh))
    summed = summed + np.asarray(_to_host(s), np.float64)
    total += float(_to_host(n))
  values = np.atleast_1d(summed / max(total, 1.0))
  names = objectives.eval_metric_names(config)
  return {f'eval_{name}': float(v) for name, v in zip(names, values)}, int(total)


def _first_restorable(ckpt, target, config, workdir):
  """(state or None, start step); a workdir already past total_steps is a clear error."""
  restored = None if ckpt is None else ckpt.restore(target)
  start_step = 0 if restored is None else restored[1]
  if start_step > config.total_steps:
    raise errors.UserInputError(
        f'{workdir} holds a checkpoint at step {start_step}, beyond config.total_steps='
        f'{config.total_steps}: nothing would be trained. Raise config.total_steps to continue '
        'that run, or pass a new --workdir.'
    )
  return (None if restored is None else restored[0]), start_step


def _checkpointer(config, workdir):
  return orbax_state.TrainStateCheckpointer(
      paths.join(workdir, 'checkpoints'), max_to_keep=config.keep_checkpoints
  )


def train_and_evaluate(config, workdir, force_unlock=False):
  """Trains (resuming from `workdir` if it has checkpoints); returns the final metrics.

  Every check comes first (config, data splits, the workdir: vit_jax/runtime/workdir.py);
  the run writes into `workdir` only once it is sure to start, and holds its lock
  (`force_unlock` takes over a lock left by a run that is gone). An error after that leaves
  the last good state saved, and its message ends with the step saved.
  `result['stopped_by_signal']` is set when SIGTERM / SIGINT stopped the run early (after
  saving a checkpoint at a step every process agreed on); see vit_jax/runtime/preemption.py.
  """
  # ----------------------------------------------------------------------------- setup
  started = time.time()
  mesh = partitioning.create_mesh(config.mesh)
  validate_config(config, mesh)
  info = input_pipeline.check_splits(config)  # every split the run reads, in seconds
  logging.info('Config:\n%s', config)  # once it passed the checks above
  num_classes = info['num_classes']
  model = make_model(config, num_classes)
  tx, schedule = optim.make_optimizer(config)
  image_shape = (config.pp.crop, config.pp.crop, config.pp.channels)
  stop = preemption.StopRequest().install()
  try:
    with workdir_lib.claim(workdir, force_unlock) as held, jax.set_mesh(mesh):
      return _run(
          config,
          held,
          mesh,
          model,
          tx,
          schedule,
          num_classes,
          image_shape,
          stop,
          started,
          info.get('class_names'),
      )
  finally:
    stop.uninstall()


def _run(
    config, held, mesh, model, tx, schedule, num_classes, image_shape, stop, started, class_names
):
  """Restores or creates the state (nothing written yet), then trains in the workdir."""
  workdir = held.workdir
  target, shardings = abstract_train_state(config, model, tx, mesh, image_shape)
  ckpt = None
  if paths.exists(paths.join(workdir, 'checkpoints')):
    ckpt = _checkpointer(config, workdir)
  try:
    state, start_step = _first_restorable(ckpt, target, config, workdir)
    if state is None:
      state = create_train_state(config, model, tx, shardings, image_shape)
    held.started()  # sure to start: from here on the run writes into the workdir
    ckpt = ckpt or _checkpointer(config, workdir)
    if jax.process_index() == 0:
      workdir_lib.write_config(config, workdir, class_names)
    result = _train_loop(
        config,
        workdir,
        mesh,
        model,
        tx,
        schedule,
        num_classes,
        target,
        shardings,
        state,
        start_step,
        ckpt,
        stop,
        started,
    )
  except BaseException as e:
    # A checkpoint being written is finished before the error propagates (no half-written
    # *.orbax-checkpoint-tmp, no noise from its threads at exit); the error stays the last word.
    saved = None
    try:
      if ckpt is not None:
        ckpt.wait_until_finished()
        saved = ckpt.latest_step()
        ckpt.close()
    except Exception as close_error:
      logging.error(
          'Finishing the pending checkpoint failed too: %s: %s',
          type(close_error).__name__,
          close_error,
      )
    if held.is_started and isinstance(e, Exception):
      failure.note_saved_step(e, saved, workdir)
    raise
  ckpt.wait_until_finished()
  ckpt.close()
  return result


def _train_loop(
    config,
    workdir,
    mesh,
    model,
    tx,
    schedule,
    num_classes,
    target,
    shardings,
    state,
    start_step,
    ckpt,
    stop,
    started,
):
  logger = metrics.MetricsLogger(workdir)
  previous = logger.resume_at(start_step)  # drops what a killed run logged after its checkpoint
  core_hours = previous.get('core_hours', 0.0)
  parameter_overview.log_parameter_overview(
      target['params'], include_stats=False, msg=f'{config.model.model_name} parameters'
  )

  # --------------------------------------------------------------------------- steps
  on_device = device_input.enabled(config)
  jitted_train_step = jit_train_step(
      config, model, tx, schedule, num_classes, shardings, mesh, on_device
  )
  train_step = step_flops = None  # compiled once, at the first step (see compile_train_step)
  eval_step = jit_eval_step(model, shardings, mesh, config)

  # ---------------------------------------------------------------------------- loop
  total, devices = config.total_steps, jax.device_count()
  report = periodic_actions.ReportProgress(
      num_train_steps=total,
      writer=logger.writer,
      every_secs=None,
      every_steps=config.progress_every,
  )
  profiler = profiling.StepProfiler(config.profile, workdir)
  if on_device:  # the step gathers its own batch; the host only sends the stop field
    device_data = (device_input.load(config, mesh)[0],)
    train_iter = iter(lambda: {}, None)
  else:
    device_data = ()
    train_iter = input_pipeline.get_data(config, 'train', start_step=start_step)
  local_batch = config.batch // jax.process_count()
  logging.info(
      'Training steps %d..%d of %s on %s', start_step + 1, total, config.dataset, dict(mesh.shape)
  )
  result, last_log, last_time = {}, start_step, time.time()
  limit_dispatch = step_queue.DispatchLimiter()
  stopped_by, stop_sent, stop_array, step_metrics = 0, None, None, None
  try:
    for step in range(start_step + 1, total + 1):
      profiler.before_step(step)
      if stop.signum != stop_sent:  # the device copy is made again only when it changes
        stop_sent = stop.signum
        stop_array = partitioning.global_batch({'stop': stop.batch_field(local_batch)}, mesh)[
            'stop'
        ]
      batch = dict(partitioning.global_batch(next(train_iter), mesh), stop=stop_array)
      if train_step is None:
        train_step = compile_train_step(jitted_train_step, state, batch, *device_data)
        step_flops = utilization.StepFlops(train_step, mesh.devices.flat)
        dropout_steps = objectives.patch_dropout_steps(config)
        if dropout_steps > step:
          logging.info(
              'flops_per_step and MFU count the full-token step (a conditional '
              'counts its costliest branch): they overstate the first %d steps, '
              'which run on %.0f%% of the patch tokens (config.patch_dropout).',
              dropout_steps,
              100 * (1 - config.patch_dropout.rate),
          )
        last_time = time.time()  # compiling is not a step
      with jax.profiler.StepTraceAnnotation('train', step_num=step):
        state, step_metrics = train_step(state, batch, *device_data)
      # Every process reads the same older step's agreed stop request here.
      for done in limit_dispatch(step_metrics):
        stopped_by = max(stopped_by, int(_to_host(done['stop'])))
      profiler.after_step(step, step_metrics)
      report(step)
      due_ckpt = step % config.checkpoint_every == 0 or step == total or stopped_by
      record = {}
      if step % config.progress_every == 0 or due_ckpt:  # the only host syncs of the loop
        host = {k: float(_to_host(v)) for k, v in step_metrics.items()}
        if not np.isfinite(host['loss']):
          raise FloatingPointError(
              f'train loss is {host["loss"]} at step {step}; stopping without saving this '
              f'state. The last good checkpoint (step {ckpt.latest_step()}) is kept in '
              f'{workdir}. Lower config.base_lr, raise config.warmup_steps or set '
              'config.grad_norm_clip.'
          )
        now = time.time()
        rate = (step - last_log) * config.batch / (now - last_time)
        record = dict(
            train_loss=host['loss'],
            learning_rate=host['learning_rate'],
            grad_norm=host['grad_norm'],
            examples_per_sec=rate,
            img_per_sec_per_device=rate / devices,
            core_hours=core_hours + devices * (now - started) / 3600,
            **step_flops.scalars(step - last_log, now - last_time),
            **{k: v for k, v in host.items() if k.startswith('train_')},
        )
        if config.pp.skip_undecodable:  # this process's count; each file is logged with its path
          record['skipped_undecodable'] = float(getattr(train_iter, 'skipped', 0))
        result['train_loss'] = host['loss']
      if due_ckpt:  # saved before the eval: a failing eval costs no steps
        ckpt.save(step, state, force=True)
      if (config.eval_every and step % config.eval_every == 0) or step == total:
        with report.timed('eval'):
          values, count = evaluate_all(config, eval_step, state, step, workdir, mesh)
        logging.info('Step %d: test %s over %d examples', step, values, count)
        record.update(values)
        result.update(values, eval_examples=count)
      if record:
        logger.write(step, **record)  # one metrics.jsonl object per logged step
        last_log, last_time = step, time.time()
      if due_ckpt:
        logger.flush()
      if stopped_by:
        logging.warning(
            'Stopped at step %d by %s on some process; checkpoint saved. Run the '
            'same command to resume.',
            step,
            signal.Signals(stopped_by).name,
        )
        result['stopped_by_signal'] = stopped_by
        break
  except Exception as e:
    if not isinstance(e, FloatingPointError):
      failure.save_state(ckpt, state, step_metrics)
    failure.flush(logger)
    raise
  profiler.stop()
  if start_step == total:  # a finished run asked again: report its accuracy
    values, count = evaluate_metrics(config, eval_step, eval_params(state), mesh)
    result.update(values, eval_examples=count)
  logger.flush()
  result['step'] = int(_to_host(state['step']))
  if result['step'] == total:
    finished = objectives.get(config).finish(config, state['params'], workdir)
    for name, value in finished.items():
      logging.info('%s: %s', name, value)
    result.update(finished)
  return result
