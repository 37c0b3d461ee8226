"""Orbax checkpoints of the whole train state: asynchronous, keeps N, never loses one.

Restoring tells two failures apart before reading any array:
- a checkpoint written by another train state (its stored tree structure, shapes or dtypes
  differ from the expected ones: another model or optimizer config) is a clear error naming
  the first difference; nothing is moved. The state keeps the model's own layout, so a run
  resumed with another config.model.transformer.scan_layers gets an error saying so;
- a damaged checkpoint (metadata missing, or an array file that cannot be read, e.g. a run
  killed mid-write or a truncated file) is moved aside to `<directory>.unreadable/<step>-<time>`
  and the previous checkpoint is tried. Nothing is deleted.
In a multi-process run every process tries the same step, they agree (all-gather) whether any
failed, only process 0 moves a damaged step aside, and the others wait for it.
"""

import re
import time

from absl import logging
import jax
from jax.experimental import multihost_utils
import numpy as np
import orbax.checkpoint as ocp

from vit_jax import errors
from vit_jax import paths


class CheckpointMismatchError(errors.UserInputError):
  """The checkpoint in the workdir was written for another train state."""


def _flat(tree):
  """{'a/b/c': (shape, dtype name)} of a tree of arrays, ShapeDtypeStructs or Orbax metadata."""
  flat = {}
  for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
    key = jax.tree_util.keystr(path, simple=True, separator='/')
    flat[key] = (tuple(leaf.shape), np.dtype(leaf.dtype).name)
  return flat


def _stacked_blocks(flat):
  """Whether a flat train state holds stacked (scanned) encoder blocks; None without blocks."""
  if any('/Transformer/encoderblock/' in f'/{k}' for k in flat):
    return True
  if any(re.search(r'(^|/)Transformer/encoderblock_\d+/', k) for k in flat):
    return False
  return None


def describe_layout_mismatch(stored, expected):
  """A sentence when the two differ in the encoder-block layout (scan_layers); or None."""
  was, now = _stacked_blocks(stored), _stacked_blocks(expected)
  if was is None or now is None or was == now:
    return None
  return (
      f'it was written with config.model.transformer.scan_layers={was} (encoder blocks '
      f'{"stacked in one encoderblock" if was else "as encoderblock_N"}) and this run has '
      f'scan_layers={now}. Resume with --config.model.transformer.scan_layers={was} '
      '(the layout does not change the numbers)'
  )


def describe_mismatch(stored, expected):
  """A sentence naming the first difference between two flat {key: (shape, dtype)}; or None."""
  missing, extra = sorted(set(expected) - set(stored)), sorted(set(stored) - set(expected))
  if missing or extra:
    return (
        f'the checkpoint lacks {missing[:3]} and has {extra[:3]} that this config does not '
        f'({len(missing)} missing, {len(extra)} unexpected entries)'
    )
  for key in sorted(expected):
    if stored[key] != expected[key]:
      return (
          f'{key} is stored with shape/dtype {stored[key]}, this config expects ' f'{expected[key]}'
      )
  return None


class TrainStateCheckpointer:
  """Saves and restores one pytree (the train state) under `directory` (local or gs://)."""

  def __init__(self, directory, *, max_to_keep, save_interval_steps=1):
    if max_to_keep < 1:
      raise ValueError(
          f'max_to_keep={max_to_keep} must be at least 1: with 0 Orbax deletes '
          'every checkpoint, the final one included.'
      )
    self._directory = directory
    self._manager = ocp.CheckpointManager(
        directory,
        options=ocp.CheckpointManagerOptions(
            max_to_keep=max_to_keep,
            save_interval_steps=save_interval_steps,
            enable_async_checkpointing=True,
            create=True,
        ),
        item_handlers=ocp.StandardCheckpointHandler(),
    )  # so that metadata reads before a save

  def restore(self, abstract_state):
    """(state, step) from the newest readable checkpoint, or None when there is none."""
    expected = _flat(abstract_state)
    for step in sorted(self._manager.all_steps(), reverse=True):
      state, problem = self._try_restore(step, abstract_state, expected)
      if not _any_process(problem is not None):
        logging.info('Restored checkpoint at step %d from %s', step, self._directory)
        return state, step
      aside = self._move_aside(step)
      logging.warning(
          'Checkpoint at step %d in %s is damaged (%s); moved it to %s and trying '
          'the previous one. Nothing is deleted.',
          step,
          self._directory,
          problem or 'unreadable on another process',
          aside,
      )
    return None

  def _try_restore(self, step, abstract_state, expected):
    """(state, None), or (None, why it is damaged); raises CheckpointMismatchError."""
    try:
      metadata = self._manager.item_metadata(step)
    except Exception as e:
      return None, f'metadata unreadable: {type(e).__name__}: {str(e)[:300]}'
    tree = getattr(metadata, 'tree', metadata)
    if not tree:
      return None, 'its tree metadata (_METADATA) is missing'
    try:
      stored = _flat(tree)
    except (AttributeError, TypeError) as e:
      return None, f'its tree metadata is malformed ({e})'
    layout = describe_layout_mismatch(stored, expected)
    if layout:
      raise CheckpointMismatchError(
          f'The checkpoint at step {step} in {self._directory} does not fit this run: '
          f'{layout}, or pass a new --workdir to start afresh (this one is left as it is).'
      )
    mismatch = describe_mismatch(stored, expected)
    if mismatch:
      raise CheckpointMismatchError(
          f'The checkpoint at step {step} in {self._directory} was written by a different train '
          f'state (another model or optimizer config): {mismatch}. Run with the config that '
          'wrote it, or pass a new --workdir to start afresh (this one is left as it is).'
      )
    try:
      return self._manager.restore(step, args=ocp.args.StandardRestore(abstract_state)), None
    except Exception as e:
      return None, f'{type(e).__name__}: {str(e)[:300]}'

  def _move_aside(self, step):
    aside = paths.join(f'{self._directory}.unreadable', f'{step}-{int(time.time())}')
    if jax.process_index() == 0:
      paths.move(paths.join(self._directory, str(step)), aside)
    if jax.process_count() > 1:
      multihost_utils.sync_global_devices(f'vit_jax checkpoint {step} moved aside')
    self._manager.reload()
    return aside

  def save(self, step, state, force=False):
    """Starts an asynchronous save (if due at this step, or forced); returns whether it did."""
    return self._manager.save(step, args=ocp.args.StandardSave(state), force=force)

  def latest_step(self):
    return self._manager.latest_step()

  def wait_until_finished(self):
    self._manager.wait_until_finished()

  def close(self):
    self._manager.close()


def _any_process(flag):
  if jax.process_count() == 1:
    return bool(flag)
  return bool(np.any(multihost_utils.process_allgather(np.array(flag, np.bool_))))


def latest_step(directory):
  """The newest step saved in `directory`, or None."""
  manager = ocp.CheckpointManager(directory, item_handlers=ocp.StandardCheckpointHandler())
  try:
    return manager.latest_step()
  finally:
    manager.close()


def load_params(directory, step=None, prefer_ema=False):
  """The `params` of a saved train state (newest step by default) as numpy arrays; with
  `prefer_ema` its `ema_params` where the run kept them (config.ema_decay).

  Works in any process layout: a checkpoint written by a multi-host run is read onto this
  process's first device (its stored shardings name devices this process does not have).
  """
  manager = ocp.CheckpointManager(directory, item_handlers=ocp.StandardCheckpointHandler())
  step = manager.latest_step() if step is None else step
  if step is None:
    raise errors.MissingInputError(f'no checkpoint in {directory!r}')
  one_device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  target = jax.tree.map(
      lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=one_device),
      manager.item_metadata(step).tree,
  )
  state = manager.restore(step, args=ocp.args.StandardRestore(target))
  manager.close()
  key = 'ema_params' if prefer_ema and 'ema_params' in state else 'params'
  return jax.tree.map(np.asarray, state[key])
