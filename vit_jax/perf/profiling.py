"""config.profile: a jax.profiler trace of a step range, stored under the workdir.

The trace is captured into a local temporary directory and then copied through the path
layer to WORKDIR/plugins/profile/<run>/, where TensorBoard's profile tab finds it; so it
lands in a gs:// workdir like every other output. Every process writes its own host's file.
"""

import os
import shutil
import tempfile

from absl import logging
import jax

from vit_jax import paths


class StepProfiler:
  """Starts a trace before step `first_step`, stops it after `num_steps` steps (0: off)."""

  def __init__(self, profile, workdir):
    self._first = int(profile.first_step)
    self._last = self._first + int(profile.num_steps) - 1
    self._workdir = workdir
    self._local = None

  def before_step(self, step):
    if self._first and step == self._first:
      self._local = tempfile.mkdtemp(prefix='vit_jax_profile_')
      jax.profiler.start_trace(self._local)
      logging.info('Profiling steps %d..%d', self._first, self._last)

  def after_step(self, step, step_output):
    if self._local is not None and step >= self._last:
      jax.block_until_ready(step_output)
      self.stop()

  def stop(self):
    """Ends a running trace (also when the loop stops early) and copies it to the workdir."""
    if self._local is None:
      return
    jax.profiler.stop_trace()
    copied = 0
    for root, _, files in os.walk(self._local):  # our own temporary directory
      for name in files:
        local = os.path.join(root, name)
        with open(local, 'rb') as f:
          paths.write_bytes(
              paths.join(self._workdir, os.path.relpath(local, self._local)), f.read()
          )
        copied += 1
    shutil.rmtree(self._local, ignore_errors=True)
    self._local = None
    logging.info('Profile trace (%d files) written under %s/plugins/profile', copied, self._workdir)
