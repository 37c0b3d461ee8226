"""TensorBoard event files written and pruned through the path layer (local or gs://).

tf.summary writes through TensorFlow's own filesystem, whose GCS client cannot be pointed at
an emulator and which would be the one part of a run not going through `vit_jax/paths.py`.
Scalars need nothing of TensorFlow: an event file is TFRecord framing around `Event` protos
(TensorBoard's own protos and crc32c, no TensorFlow).

`drop_steps_after` removes the records a killed run logged after the checkpoint it resumes
from, so TensorBoard shows one value per step after a restart.
"""
import os
import socket
import struct
import time

from absl import logging
from clu.metric_writers import interface
from tensorboard.compat.proto import event_pb2
from tensorboard.compat.proto import summary_pb2
from tensorboard.compat.tensorflow_stub.pywrap_tensorflow import masked_crc32c

from vit_jax import paths

EVENT_FILE_MARKER = 'tfevents'


def encode_record(data):
  """One TFRecord: length, its masked crc32c, the data, the data's masked crc32c."""
  header = struct.pack('<Q', len(data))
  return (header + struct.pack('<I', masked_crc32c(header)) + data +
          struct.pack('<I', masked_crc32c(data)))


def decode_records(blob, name='event file'):
  """The records of a TFRecord file's bytes; a torn last record (a killed writer) is dropped."""
  records, offset = [], 0
  while offset + 12 <= len(blob):
    (length,) = struct.unpack('<Q', blob[offset:offset + 8])
    end = offset + 12 + length + 4
    if end > len(blob):
      logging.warning('%s: dropping a torn record at byte %d', name, offset)
      break
    records.append(blob[offset + 12:offset + 12 + length])
    offset = end
  return records


def _scalar_event(step, tag, value, wall_time):
  summary = summary_pb2.Summary(value=[summary_pb2.Summary.Value(tag=tag,
                                                                 simple_value=float(value))])
  return event_pb2.Event(wall_time=wall_time, step=int(step), summary=summary)


class EventFileWriter(interface.MetricWriter):
  """A clu MetricWriter of scalars into one new event file under `logdir`.

  Records are buffered and appended on `flush()` (an object store rewrites the object).
  """

  def __init__(self, logdir):
    now = time.time()
    name = (f'events.out.{EVENT_FILE_MARKER}.{now:.0f}.{socket.gethostname()}.{os.getpid()}'
            '.vit_jax.v2')
    self._path = paths.join(logdir, name)
    first = event_pb2.Event(wall_time=now, file_version='brain.Event:2')
    self._pending = [encode_record(first.SerializeToString())]

  @property
  def path(self):
    return self._path

  def write_scalars(self, step, scalars):
    now = time.time()
    for tag, value in scalars.items():
      self._pending.append(encode_record(
          _scalar_event(step, tag, value, now).SerializeToString()))

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
      logging.info('%s: dropped %d records after step %d (logged by a run that did not '
                   'save them)', path, len(records) - len(kept), step)
