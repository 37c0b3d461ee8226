"""Orbax checkpoints of the whole train state: asynchronous, keeps N, survives preemption.

A newest checkpoint that cannot be read (a crash mid-write, a corrupted file) is skipped with
a warning and the previous one is restored. Nothing is deleted: the unreadable step is moved
to `<directory>.unreadable/<step>` so the resumed run can write that step again.
"""
import os
import signal
import time

from absl import logging
import orbax.checkpoint as ocp


class TrainStateCheckpointer:
  """Saves and restores one pytree (the train state) under `directory`."""

  def __init__(self, directory, *, max_to_keep, save_interval_steps):
    self._manager = ocp.CheckpointManager(
        directory, options=ocp.CheckpointManagerOptions(
            max_to_keep=max_to_keep, save_interval_steps=save_interval_steps,
            enable_async_checkpointing=True, create=True))
    self._preempted = False

  def restore(self, abstract_state):
    """(state, step) from the newest readable checkpoint, or None when there is none."""
    for step in sorted(self._manager.all_steps(), reverse=True):
      try:
        state = self._manager.restore(step, args=ocp.args.StandardRestore(abstract_state))
      except Exception as e:  # pylint: disable=broad-except
        if 'tree structures do not match' in str(e) or 'shape' in str(e).lower():
          raise ValueError(
              f'The checkpoint at step {step} in {self._manager.directory} was written by a '
              'different train state (another model or optimizer config); use a new '
              f'--workdir or the config that wrote it. Orbax said: {str(e)[:300]}') from e
        aside = self._move_aside(step)
        logging.warning('Checkpoint at step %d in %s is unreadable (%s: %s); moved it to %s '
                        'and trying the previous one. Nothing is deleted.', step,
                        self._manager.directory, type(e).__name__, str(e)[:500], aside)
        continue
      logging.info('Restored checkpoint at step %d from %s', step, self._manager.directory)
      return state, step
    return None

  def _move_aside(self, step):
    directory = os.fspath(self._manager.directory)
    aside = os.path.join(f'{directory}.unreadable', f'{step}-{int(time.time())}')
    os.makedirs(os.path.dirname(aside), exist_ok=True)
    os.rename(os.path.join(directory, str(step)), aside)
    self._manager.reload()
    return aside

  def save(self, step, state, force=False):
    """Starts an asynchronous save (if due at this step, or forced); returns whether it did."""
    return self._manager.save(step, args=ocp.args.StandardSave(state), force=force)

  def install_sigterm_handler(self):
    def on_sigterm(signum, frame):
      del signum, frame
      logging.warning('SIGTERM: saving a checkpoint at the next step and stopping.')
      self._preempted = True
    signal.signal(signal.SIGTERM, on_sigterm)

  def preemption_requested(self):
    return self._preempted

  def latest_step(self):
    return self._manager.latest_step()

  def wait_until_finished(self):
    self._manager.wait_until_finished()

  def close(self):
    self._manager.close()


def load_params(directory, step=None):
  """The `params` of a saved train state (newest step by default) as numpy arrays."""
  manager = ocp.CheckpointManager(directory)
  step = manager.latest_step() if step is None else step
  if step is None:
    raise FileNotFoundError(f'no checkpoint in {directory!r}')
  state = ocp.StandardCheckpointer().restore(os.path.join(directory, str(step), 'default'))
  return state['params']
