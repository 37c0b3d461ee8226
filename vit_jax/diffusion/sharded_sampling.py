"""Sampling at FID scale: N samples of random classes in fixed-size chunks over every device
and process, one file per chunk, resumable, then one npz in ADM's layout.

Chunk k holds samples k*C .. k*C + C - 1 (C, the chunk size, is a multiple of the
data-parallel devices and of the processes). Its labels (uniform over the classes, as DiT's
sample_ddp.py draws them) and its noise are functions of (seed, k) alone, so a seed gives
the same samples whatever the process count and whichever chunks an interrupted command
already wrote. Each chunk runs as one sharded program over the whole mesh (sampling, the VAE
decoder of a latent DiT, the uint8 conversion); process 0 writes it to OUT/chunks/ whole
(a temporary name renamed over, or one object on gs://). A restarted command skips the chunks
that exist; SIGTERM or Ctrl-C stops every process after the same chunk. OUT/sampling.json
records the settings, and a folder holding chunks of other settings is refused.
"""

import dataclasses
import io
import json
import re
import sys
import time
import zipfile

import jax
from jax.experimental import multihost_utils
import jax.numpy as jnp
import numpy as np

from vit_jax import errors
from vit_jax import paths
from vit_jax.runtime import partitioning
from vit_jax.runtime import preemption

CHUNKS = 'chunks'
SETTINGS = 'sampling.json'
SAMPLES = 'samples.npz'
_CHUNK_FILE = re.compile(r'chunk_(\d{5,})\.npz')
_LABEL_STREAM = 1  # a numpy stream of its own: labels never share bits with jax's noise keys


def chunk_labels(seed, k, size, num_classes):
  """The labels of chunk k: uniform over 0..num_classes-1, a function of (seed, k)."""
  rng = np.random.default_rng([seed & 0xFFFFFFFF, k, _LABEL_STREAM])
  return rng.integers(0, num_classes, size).astype(np.int32)


def chunk_file(k):
  return f'chunk_{k:05d}.npz'


@dataclasses.dataclass(frozen=True)
class Plan:
  """What a command samples: `num_samples` in chunks of `chunk_size` into folder `out`."""

  out: str
  num_samples: int
  chunk_size: int
  seed: int
  num_classes: int

  @property
  def num_chunks(self):
    return -(-self.num_samples // self.chunk_size)

  def size_of(self, k):
    """Samples kept of chunk k (the last chunk is cut at num_samples)."""
    return min(self.chunk_size, self.num_samples - k * self.chunk_size)

  def path_of(self, k):
    return paths.join(self.out, CHUNKS, chunk_file(k))

  def written(self):
    """Indices of the chunk files in OUT/chunks (whole: written under another name first)."""
    folder = paths.join(self.out, CHUNKS)
    if not paths.exists(folder):
      return set()
    found = (_CHUNK_FILE.fullmatch(name) for name in paths.listdir(folder))
    return {int(m.group(1)) for m in found if m and int(m.group(1)) < self.num_chunks}


def check_out_dir(out, settings):
  """Refuses an OUT whose samples were made with other settings (one line naming the first
  field that differs), or whose chunks have no record of theirs; nothing there is touched."""
  record = paths.join(out, SETTINGS)
  if paths.exists(record):
    old = json.loads(paths.read_text(record))
    for key, value in settings.items():
      if old.get(key) != value:
        raise errors.UserInputError(
            f'--out={out} holds samples made with {key}={old.get(key)!r} (recorded in '
            f'{record}), not {key}={value!r}; sample into another --out, or finish those with '
            'the settings recorded there'
        )
  elif paths.exists(paths.join(out, CHUNKS)) and paths.listdir(paths.join(out, CHUNKS)):
    raise errors.UserInputError(
        f'--out={out} holds {CHUNKS}/ without the {SETTINGS} that says how they were made; '
        'sample into another --out'
    )


def make_chunk_fn(sample, decoder=None):
  """One jitted `f(params, vae_params, labels, seed_and_k) -> uint8 [C, H, W, 3]` from a
  guided sampler (guidance.make_sampler): samples, decodes latents through `decoder`
  (a VAE module, or None for pixels), rounds (x + 1) * 127.5 clipped to uint8 as
  image_grid.to_uint8 does, and repeats one gray channel three times for Inception."""
  from vit_jax.models import vae_batches

  def run(params, vae_params, labels, seed_and_k):
    key = jax.random.fold_in(jax.random.PRNGKey(seed_and_k[0]), seed_and_k[1])
    x = sample(params, labels, key)
    if decoder is not None:
      x = vae_batches.decode_on_devices(decoder, vae_params, x)
    images = jnp.clip(jnp.round((x + 1) * 127.5), 0, 255).astype(jnp.uint8)
    if images.shape[-1] == 1:
      images = jnp.repeat(images, 3, axis=-1)
    return images

  return jax.jit(run)


def _say(text):
  if jax.process_index() == 0:
    print(text, file=sys.stderr, flush=True)


def _todo(plan):
  """Chunks still to sample, as process 0 sees OUT (the one that writes them)."""
  missing = np.ones(plan.num_chunks, np.bool_)
  if jax.process_index() == 0:
    missing[sorted(plan.written())] = False
  if jax.process_count() > 1:
    missing = multihost_utils.broadcast_one_to_all(missing)
  return [int(k) for k in np.flatnonzero(missing)]


def _stop_signal(stop):
  """The largest signal any process received (every process returns the same)."""
  if jax.process_count() == 1:
    return stop.signum
  return int(np.max(multihost_utils.process_allgather(np.array([stop.signum], np.int32))))


def _chunk_bytes(images, labels):
  buffer = io.BytesIO()
  np.savez(buffer, arr_0=images, arr_1=labels.astype(np.int64))
  return buffer.getvalue()


def sample_chunks(plan, chunk_fn, params, vae_params, mesh, settings):
  """Samples every chunk missing from OUT/chunks; the signal number if a signal stopped it
  (after a whole chunk), else 0. `params` and `vae_params` are laid out on `mesh`."""
  todo = _todo(plan)
  record = paths.join(plan.out, SETTINGS)
  recorded = jax.process_index() != 0 or paths.exists(record)
  if len(todo) < plan.num_chunks:
    _say(
        f'{plan.num_chunks - len(todo)} of {plan.num_chunks} chunks already in '
        f'{paths.join(plan.out, CHUNKS)}; sampling the {len(todo)} missing: '
        f'{todo if len(todo) <= 20 else todo[:20] + ["..."]}'
    )
  sharding = partitioning.batch_sharding(mesh)
  stop = preemption.StopRequest('finishing the current chunk').install()
  start, done = time.time(), 0
  try:
    for i, k in enumerate(todo):
      labels = chunk_labels(plan.seed, k, plan.chunk_size, plan.num_classes)
      global_labels = jax.make_array_from_callback(
          labels.shape, sharding, lambda index, y=labels: y[index]
      )
      seed_and_k = np.array([plan.seed, k], np.int32)
      images = chunk_fn(params, vae_params, global_labels, seed_and_k)
      images = np.asarray(multihost_utils.process_allgather(images, tiled=True))
      keep = plan.size_of(k)
      if not recorded:  # with the first chunk: a failure before it leaves OUT as it was
        paths.write_text(record, json.dumps(settings, indent=2) + '\n')
        recorded = True
      if jax.process_index() == 0:
        paths.write_bytes(plan.path_of(k), _chunk_bytes(images[:keep], labels[:keep]))
      done += keep
      rate = done / (time.time() - start)
      _say(
          f'chunk {k + 1}/{plan.num_chunks} written ({i + 1}/{len(todo)} this run, '
          f'{done} samples, {rate:.2f} samples/s)'
      )
      signum = _stop_signal(stop)
      if signum and i + 1 < len(todo):
        return signum
  finally:
    stop.uninstall()
  return 0


def _read_chunk(path):
  with np.load(io.BytesIO(paths.read_bytes(path))) as data:
    return data['arr_0'], data['arr_1']


def write_samples(plan):
  """OUT/samples.npz in ADM's layout (`arr_0` uint8 [N, H, W, 3], `arr_1` int64 labels) from
  the chunk files in order, streamed: one chunk in memory at a time, whatever N is."""
  first, first_labels = _read_chunk(plan.path_of(0))
  header = {
      'descr': np.lib.format.dtype_to_descr(np.dtype(np.uint8)),
      'fortran_order': False,
      'shape': (plan.num_samples,) + first.shape[1:],
  }
  labels = []
  path = paths.join(plan.out, SAMPLES)
  with paths.open_write(path) as f, zipfile.ZipFile(f, 'w', allowZip64=True) as z:
    with z.open('arr_0.npy', 'w', force_zip64=True) as member:
      np.lib.format.write_array_header_1_0(member, header)
      for k in range(plan.num_chunks):
        images, y = (first, first_labels) if k == 0 else _read_chunk(plan.path_of(k))
        if images.shape[1:] != first.shape[1:] or len(images) != plan.size_of(k):
          raise errors.UserInputError(
              f'{plan.path_of(k)} holds {images.shape} images, not {plan.size_of(k)} of '
              f'{first.shape[1:]}; it was not written by these settings: move it away and '
              'run again to sample it anew'
          )
        member.write(np.ascontiguousarray(images).tobytes())
        labels.append(y)
    with z.open('arr_1.npy', 'w') as member:
      np.lib.format.write_array(member, np.concatenate(labels).astype(np.int64))
  return path
