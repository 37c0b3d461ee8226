"""Metric output: clu writers (TensorBoard + log) and DIR/metrics.jsonl, one object a step."""
import json
import os

from clu import metric_writers
import jax
import numpy as np


class MetricsLogger:
  """Writes scalars to TensorBoard and the log (process 0) and appends to metrics.jsonl."""

  def __init__(self, workdir):
    self._primary = jax.process_index() == 0
    self.writer = metric_writers.create_default_writer(
        workdir, just_logging=not self._primary)
    self._jsonl = os.path.join(workdir, 'metrics.jsonl')

  def write(self, step, **scalars):
    scalars = {k: float(np.asarray(v)) for k, v in scalars.items()}
    self.writer.write_scalars(step, scalars)
    if self._primary:
      with open(self._jsonl, 'a') as f:
        f.write(json.dumps(dict(step=int(step), **scalars)) + '\n')

  def flush(self):
    self.writer.flush()


def read_jsonl(workdir):
  """All records of DIR/metrics.jsonl (for tests and notebooks)."""
  path = os.path.join(workdir, 'metrics.jsonl')
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]
