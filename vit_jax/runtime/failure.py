"""A run that fails after it started keeps its work: the state saved, the step said last.

`save_state` saves the in-memory train state after an error in the loop (a data error at
step 900 of a run that checkpoints every 1,000 steps then costs nothing), and
`note_saved_step` ends the error's message with the step a rerun resumes from.
"""

from absl import logging
import jax
import numpy as np


def _host_int(x):
  return int(np.asarray(x.addressable_data(0)))


def save_state(ckpt, state, step_metrics):
  """Saves `state` if it is whole (not donated to the step that failed), its last loss
  finite and its step newer than the last checkpoint; single-process runs only (a save is
  collective, and after an error the other processes may be anywhere)."""
  if jax.process_count() > 1 or state is None:
    return
  try:
    if any(x.is_deleted() for x in jax.tree.leaves(state)):
      return
    step, latest = _host_int(state['step']), ckpt.latest_step()
    if step == 0 or (latest is not None and step <= latest):
      return
    if step_metrics is not None and not np.isfinite(
        float(np.asarray(step_metrics['loss'].addressable_data(0)))
    ):
      return
    ckpt.save(step, state, force=True)
    ckpt.wait_until_finished()
    logging.warning('Saved the state of step %d after the error below.', step)
  except Exception as e:
    logging.error('Saving the state after the error failed too: %s: %s', type(e).__name__, e)


def note_saved_step(error, saved, workdir):
  """Adds the step a rerun resumes from to `error` (printed after its message)."""
  if saved:
    error.add_note(
        f'The checkpoint at step {saved} is saved in {workdir}; run the same command to '
        'resume from it.'
    )
  else:
    error.add_note(f'No checkpoint was saved in {workdir}.')


def flush(logger):
  """Writes the metrics logged so far; a failure to do so is logged, not raised over the
  error that is on its way."""
  try:
    logger.flush()
  except Exception as e:
    logging.error('Writing the metrics after the error failed too: %s: %s', type(e).__name__, e)
