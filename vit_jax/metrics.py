"""Metric output under the workdir (local or gs://): the log, TensorBoard events and
metrics.jsonl, one object a logged step.

Process 0 writes the files. Local files are appended at every write; on an object store
(where an append rewrites the object) records are buffered until `flush()`, which the train
loop calls at every checkpoint and at the end. After a resume, `resume_at(step)` drops what a
killed run logged after the checkpoint it resumes from, so every step appears once.
"""
import json

from clu import metric_writers
import jax
import numpy as np

from vit_jax import paths
from vit_jax import tensorboard_events

JSONL = 'metrics.jsonl'


class MetricsLogger:
  """Writes scalars to the log (every process), TensorBoard and metrics.jsonl (process 0)."""

  def __init__(self, workdir):
    self._primary = jax.process_index() == 0
    self._jsonl = paths.join(workdir, JSONL)
    self._workdir = workdir
    self._events = tensorboard_events.EventFileWriter(workdir) if self._primary else None
    writers = [metric_writers.LoggingWriter()] + ([self._events] if self._events else [])
    self.writer = metric_writers.MultiWriter(writers)
    self._pending = []
    self._flush_every_write = not paths.is_remote(workdir)

  def resume_at(self, step):
    """Drops records of steps after `step`; returns the last metrics.jsonl record up to it."""
    if not self._primary:
      return {}
    records = read_jsonl(self._workdir) if paths.exists(self._jsonl) else []
    kept = [r for r in records if r['step'] <= step]
    if len(kept) != len(records):
      paths.write_text(self._jsonl, ''.join(json.dumps(r) + '\n' for r in kept))
    tensorboard_events.drop_steps_after(self._workdir, step)
    return kept[-1] if kept else {}

  def write(self, step, **scalars):
    scalars = {k: float(np.asarray(v)) for k, v in scalars.items()}
    self.writer.write_scalars(step, scalars)
    if self._primary:
      self._pending.append(json.dumps(dict(step=int(step), **scalars)) + '\n')
    if self._flush_every_write:
      self.flush()

  def flush(self):
    self.writer.flush()
    if self._pending:
      paths.append_bytes(self._jsonl, ''.join(self._pending).encode('utf-8'))
      self._pending = []


def read_jsonl(workdir):
  """All records of WORKDIR/metrics.jsonl (for tests and notebooks); a line that does not
  parse (torn by a run killed mid-write) is skipped."""
  records = []
  for line in paths.read_text(paths.join(workdir, JSONL)).splitlines():
    try:
      records.append(json.loads(line))
    except json.JSONDecodeError:
      continue
  return records
