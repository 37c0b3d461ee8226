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
import numpy as np

from vit_jax import config_checks
from vit_jax import errors
from vit_jax import input_pipeline
from vit_jax import objectives
from vit_jax import paths
from vit_jax.checkpoints import orbax_state
from vit_jax.datasets import device_input
from vit_jax.perf import profiling
from vit_jax.perf import utilization
from vit_jax.runtime import failure
from vit_jax.runtime import gcs_credentials
from vit_jax.runtime import partitioning
from vit_jax.runtime import preemption
from vit_jax.runtime import step_queue
from vit_jax.runtime import workdir as workdir_lib
from vit_jax.training import metrics
from vit_jax.training import optim
from vit_jax.training import steps


def make_model(config, num_classes):
  """The model of `config.objective` (a classifier, or a masked autoencoder)."""
  return objectives.make_model(config, num_classes)


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
  target, shardings = steps.abstract_train_state(config, model, tx, mesh, image_shape)
  ckpt = None
  if paths.exists(paths.join(workdir, 'checkpoints')):
    ckpt = _checkpointer(config, workdir)
  try:
    state, start_step = _first_restorable(ckpt, target, config, workdir)
    if state is None:
      state = steps.create_train_state(config, model, tx, shardings, image_shape)
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
  jitted_train_step = steps.jit_train_step(
      config, model, tx, schedule, num_classes, shardings, mesh, on_device
  )
  train_step = step_flops = None  # compiled once, at the first step (see compile_train_step)
  eval_step = steps.jit_eval_step(model, shardings, mesh, config)

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
        train_step = steps.compile_train_step(jitted_train_step, state, batch, *device_data)
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
        stopped_by = max(stopped_by, int(steps.to_host(done['stop'])))
      profiler.after_step(step, step_metrics)
      report(step)
      due_ckpt = step % config.checkpoint_every == 0 or step == total or stopped_by
      record = {}
      if step % config.progress_every == 0 or due_ckpt:  # the only host syncs of the loop
        host = {k: float(steps.to_host(v)) for k, v in step_metrics.items()}
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
          values, count = steps.evaluate_all(config, eval_step, state, step, workdir, mesh)
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
    values, count = steps.evaluate_metrics(config, eval_step, steps.eval_params(state), mesh)
    result.update(values, eval_examples=count)
  logger.flush()
  result['step'] = int(steps.to_host(state['step']))
  if result['step'] == total:
    finished = objectives.get(config).finish(config, state['params'], workdir)
    for name, value in finished.items():
      logging.info('%s: %s', name, value)
    result.update(finished)
  return result
