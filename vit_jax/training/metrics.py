"""Metric output under the workdir (local or gs://): the log, TensorBoard events and
metrics.jsonl, one object a logged step.

Process 0 writes the files. Local files are appended at every write; on an object store
(where an append rewrites the object) records are buffered until `flush()`, which the train
loop calls at every checkpoint and at the end. After a resume, `resume_at(step)` drops what a
killed run logged after the checkpoint it resumes from, so every step appears once.

TensorBoard event files are written and pruned here through the path layer too: tf.summary
writes through TensorFlow's own filesystem, whose GCS client cannot be pointed at an emulator
and which would be the one part of a run not going through `vit_jax/paths.py`. Scalars need
nothing of TensorFlow: an event file is TFRecord framing around `Event` protos (TensorBoard's
own protos and crc32c, no TensorFlow).

`drop_steps_after` removes the records a killed run logged after the checkpoint it resumes
from, so TensorBoard shows one value per step after a restart.
"""

import json
import os
import socket
import struct
import time

from absl import logging
from clu import metric_writers
from clu.metric_writers import interface
import jax
import numpy as np
from tensorboard.compat.proto import event_pb2
from tensorboard.compat.proto import summary_pb2
from tensorboard.compat.tensorflow_stub.pywrap_tensorflow import masked_crc32c

from vit_jax import paths

JSONL = 'metrics.jsonl'


class MetricsLogger:
  """Writes scalars to the log (every process), TensorBoard and metrics.jsonl (process 0)."""

  def __init__(self, workdir):
    self._primary = jax.process_index() == 0
    self._jsonl = paths.join(workdir, JSONL)
    self._workdir = workdir
    self._events = EventFileWriter(workdir) if self._primary else None
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
    drop_steps_after(self._workdir, step)
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


EVENT_FILE_MARKER = 'tfevents'


def encode_record(data):
  """One TFRecord: length, its masked crc32c, the data, the data's masked crc32c."""
  header = struct.pack('<Q', len(data))
  return (
      header
      + struct.pack('<I', masked_crc32c(header))
      + data
      + struct.pack('<I', masked_crc32c(data))
  )


def decode_records(blob, name='event file'):
  """The records of a TFRecord file's bytes; a torn last record (a killed writer) is dropped."""
  records, offset = [], 0
  while offset + 12 <= len(blob):
    (length,) = struct.unpack('<Q', blob[offset : offset + 8])
    end = offset + 12 + length + 4
    if end > len(blob):
      logging.warning('%s: dropping a torn record at byte %d', name, offset)
      break
    records.append(blob[offset + 12 : offset + 12 + length])
    offset = end
  return records


def _scalar_event(step, tag, value, wall_time):
  summary = summary_pb2.Summary(
      value=[summary_pb2.Summary.Value(tag=tag, simple_value=float(value))]
  )
  return event_pb2.Event(wall_time=wall_time, step=int(step), summary=summary)


class EventFileWriter(interface.MetricWriter):
  """A clu MetricWriter of scalars into one new event file under `logdir`.

  Records are buffered and appended on `flush()` (an object store rewrites the object).
  """

  def __init__(self, logdir):
    now = time.time()
    name = (
        f'events.out.{EVENT_FILE_MARKER}.{now:.0f}.{socket.gethostname()}.{os.getpid()}'
        '.vit_jax.v2'
    )
    self._path = paths.join(logdir, name)
    first = event_pb2.Event(wall_time=now, file_version='brain.Event:2')
    self._pending = [encode_record(first.SerializeToString())]

  @property
  def path(self):
    return self._path

  def write_scalars(self, step, scalars):
    now = time.time()
    for tag, value in scalars.items():
      self._pending.append(encode_record(_scalar_event(step, tag, value, now).SerializeToString()))

  def write_summaries(self, step, values, metadata=None):
    del metadata
    self.write_scalars(step, values)

  def _only_scalars(self, *args, **kwargs):
    del args, kwargs
    raise NotImplementedError('EventFileWriter writes scalars only.')

  write_images = write_videos = write_audios = write_texts = _only_scalars
  write_histograms = write_hparams = _only_scalars

  def flush(self):
    if self._pending:
      paths.append_bytes(self._path, b''.join(self._pending))
      self._pending = []

  def close(self):
    self.flush()


def event_files(logdir):
  if not paths.isdir(logdir):
    return []
  return [paths.join(logdir, n) for n in paths.listdir(logdir) if EVENT_FILE_MARKER in n]


def read_scalars(logdir):
  """[(step, tag, value)] of every scalar in the event files of `logdir` (tests, notebooks)."""
  out = []
  for path in event_files(logdir):
    for record in decode_records(paths.read_bytes(path), path):
      event = event_pb2.Event.FromString(record)
      for value in event.summary.value:
        out.append((event.step, value.tag, value.simple_value))
  return out


def _summary_after(record, step):
  event = event_pb2.Event.FromString(record)
  return event.HasField('summary') and event.step > step


def drop_steps_after(logdir, step):
  """Rewrites the event files of `logdir` without the summaries of steps after `step`."""
  for path in event_files(logdir):
    records = decode_records(paths.read_bytes(path), path)
    kept = [r for r in records if not _summary_after(r, step)]
    if len(kept) != len(records):
      paths.write_bytes(path, b''.join(encode_record(r) for r in kept))
      logging.info(
          '%s: dropped %d records after step %d (logged by a run that did not ' 'save them)',
          path,
          len(records) - len(kept),
          step,
      )
