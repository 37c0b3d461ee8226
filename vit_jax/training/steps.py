"""The jitted train and eval steps of the one train loop (vit_jax/train.py), and its state.

The state is a dict: step, params, opt_state, and ema_params when config.ema_decay > 0. It is
created already sharded on the mesh (`create_train_state`), or described without allocating
anything (`abstract_train_state`) for a restore to fill. The train step is a pure function of
(state, batch); its dropout rng is fold_in(seed, step), so a resumed run repeats it bitwise.
Evaluations read the EMA parameters where the run keeps them.
"""

import jax
from jax.experimental import multihost_utils
import jax.numpy as jnp
import numpy as np
import optax

from vit_jax import checkpoint
from vit_jax import input_pipeline
from vit_jax import objectives
from vit_jax.datasets import device_input
from vit_jax.models import resnet
from vit_jax.runtime import partitioning


def to_host(x):
  """A replicated (possibly multi-process) array as numpy."""
  return np.asarray(x.addressable_data(0))


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
    summed = summed + np.asarray(to_host(s), np.float64)
    total += float(to_host(n))
  values = np.atleast_1d(summed / max(total, 1.0))
  names = objectives.eval_metric_names(config)
  return {f'eval_{name}': float(v) for name, v in zip(names, values)}, int(total)
