"""The interface every objective implements; the train loop asks it and nothing else.

An objective is one object registered under its `config.objective` name: the model it trains,
the dummy inputs that initialise that model, its loss, its eval step and metric names, and
what it adds to an evaluation (samples, FID) or writes at the end (an encoder to fine-tune).
"""


class Objective:
  """Defaults shared by the objectives; each subclass overrides what differs."""

  name = ''

  def make_model(self, config, num_classes):
    raise NotImplementedError

  def init_inputs(self, config, image_shape):
    """The arguments of `model.init(rng, *inputs, train=False)` for one example."""
    import jax.numpy as jnp

    return (jnp.zeros((1,) + tuple(image_shape)),)

  def make_loss_fn(self, model, config, num_classes, patch_dropout=False):
    """loss_fn(params, images, labels, rng, scale=None) -> (loss, {name: scalar}).

    `scale` holds per-example weights (skipped undecodable images weigh 0); the dict holds
    extra train metrics (the terms of the loss), logged as train_<name>."""
    raise NotImplementedError

  def make_eval_step(self, model, config):
    """eval_step(params, batch) -> (sum of each eval metric over real examples, count)."""
    raise NotImplementedError

  def eval_metric_names(self, config):
    """The names of the values the eval step sums, in order; the first is the main one."""
    raise NotImplementedError

  def evaluate_extra(self, config, params, step, workdir, mesh):
    """{'eval_<name>': value} computed besides the eval split's sums (e.g. from samples)."""
    del config, params, step, workdir, mesh
    return {}

  def finish(self, config, params, workdir):
    """What the objective writes when the run reaches total_steps: {result key: value}."""
    del config, params, workdir
    return {}
