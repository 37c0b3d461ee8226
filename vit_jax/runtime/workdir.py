"""One workdir, one run: whose folder a workdir is, and the lock that keeps a second run out.

Ownership. A workdir is vit_jax's when it is missing, empty, or holds the `config.json` a run
wrote (a JSON object with `model`, `pp` and `total_steps`), or only a lock. Anything else (a
Hugging Face model folder, the pretrained checkpoint's folder, a home directory) is refused
with one line before anything is written, so a mistyped --workdir never replaces a user's
files.

The lock. WORKDIR/vit_jax.lock (local or gs://) is created exclusively (local: O_EXCL; Cloud
Storage: the precondition ifGenerationMatch=0, so of two runs exactly one gets it) by process
0 and names its owner: host, pid, the pid's start time, the command, and a heartbeat that a
thread rewrites every HEARTBEAT_SECONDS. A second run finds it and stops with one line naming
the first. A lock is stale when its owner was on this host and that process is gone (or its
pid now belongs to a newer process), or, for another host, when its heartbeat is older than
STALE_SECONDS: a stale lock is taken over with a warning. `force_unlock` (--force_unlock)
takes over any lock but one held by a live process on this host.

In a multi-process run only process 0 checks and locks; it tells the others (a broadcast
every process joins, also when it failed), so they all stop with the same line or all go on.
"""

import contextlib
import json
import os
import socket
import sys
import threading
import time
import uuid

from absl import logging

from vit_jax import errors
from vit_jax import paths

LOCK = 'vit_jax.lock'
CONFIG = 'config.json'
HEARTBEAT_SECONDS = 30
STALE_SECONDS = 600
_RUN_CONFIG_KEYS = ('model', 'pp', 'total_steps')


def is_run_config(workdir):
  """Whether WORKDIR/config.json is a config a vit_jax run wrote."""
  try:
    saved = json.loads(paths.read_text(paths.join(workdir, CONFIG)))
  except (ValueError, OSError):
    return False
  return isinstance(saved, dict) and all(k in saved for k in _RUN_CONFIG_KEYS)


def write_config(config, workdir, class_names):
  """WORKDIR/config.json: the resolved config of the run (as big_vision writes it) and the
  dataset's `class_names`, for inference and export from the workdir."""
  saved = json.loads(config.to_json_best_effort())
  saved['class_names'] = [str(n) for n in class_names or []] or None
  paths.write_text(paths.join(workdir, CONFIG), json.dumps(saved, indent=2))


def refuse_unless_ours(workdir):
  """UserInputError unless `workdir` is missing, empty or a vit_jax workdir; reads only."""
  if not paths.exists(workdir):
    return
  if not paths.isdir(workdir):
    raise errors.UserInputError(
        f'--workdir={workdir!r} is a file, not a folder; pass a folder '
        '(it is created if missing).'
    )
  names = paths.listdir(workdir)
  if not names or names == [LOCK] or is_run_config(workdir):
    return
  shown = ', '.join(names[:5]) + (f' and {len(names) - 5} more' if len(names) > 5 else '')
  why = (
      f'its {CONFIG} was not written by vit_jax (e.g. a Hugging Face model folder)'
      if CONFIG in names
      else f'it has no {CONFIG} of a vit_jax run'
  )
  raise errors.UserInputError(
      f'--workdir={workdir!r} holds files that are not a vit_jax run ({shown}): {why}. '
      'Nothing was written to it. Pass a new or empty folder as --workdir.'
  )


def _process_start(pid):
  """The start time (clock ticks since boot) of a local process, or None where unknown."""
  try:
    with open(f'/proc/{pid}/stat', 'rb') as f:  # the kernel's, not a user path
      return int(f.read().rsplit(b')', 1)[1].split()[19])
  except (OSError, IndexError, ValueError):
    return None


def _pid_alive(pid):
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:  # another user's process
    return True
  return True


def owner_alive(owner, now=None):
  """Whether the run that wrote the lock `owner` (its parsed contents) may still run."""
  if owner.get('host') == socket.gethostname():
    pid = owner.get('pid')
    if not isinstance(pid, int) or not _pid_alive(pid):
      return False
    start = _process_start(pid)
    return owner.get('pid_start') is None or start is None or start == owner['pid_start']
  now = time.time() if now is None else now
  return now - float(owner.get('heartbeat', 0)) < STALE_SECONDS


def describe(owner, now=None):
  now = time.time() if now is None else now
  started = time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(owner.get('started', 0)))
  return (
      f"pid {owner.get('pid')} on host {owner.get('host')!r}, started {started}, last "
      f"heartbeat {now - float(owner.get('heartbeat', 0)):.0f} s ago, command: "
      f"{owner.get('command', '?')}"
  )


class Lock:
  """WORKDIR/vit_jax.lock held by this process, with a heartbeat thread."""

  def __init__(self, workdir):
    self.workdir = workdir
    self.path = paths.join(workdir, LOCK)
    pid = os.getpid()
    self._owner = {
        'host': socket.gethostname(),
        'pid': pid,
        'pid_start': _process_start(pid),
        'token': uuid.uuid4().hex,
        'started': time.time(),
        'command': ' '.join([os.path.basename(sys.argv[0])] + sys.argv[1:])[:500],
    }
    self._stop = threading.Event()
    self._thread = None

  def _contents(self):
    return json.dumps(dict(self._owner, heartbeat=time.time()), indent=1).encode('utf-8')

  def read_owner(self):
    """The current lock's parsed contents, {} when it cannot be parsed, None when absent."""
    for attempt in range(3):
      try:
        text = paths.read_text(self.path)
      except FileNotFoundError:
        return None
      try:
        owner = json.loads(text)
        return owner if isinstance(owner, dict) else {}
      except ValueError:  # being written this instant: read again
        if attempt < 2:
          time.sleep(0.5)
    return {}

  def acquire(self, force=False):
    """Takes the lock (a stale one, or with `force` any not held by a live local process);
    UserInputError naming the holder otherwise."""
    try:
      if paths.create_exclusive(self.path, self._contents()):
        return self._start_heartbeat()
      owner = self.read_owner()
      if owner is None:  # released between the two calls
        return self.acquire(force)
      if owner and owner_alive(owner):
        local = owner.get('host') == socket.gethostname()
        if not force or local:
          hint = (
              f'that process is alive on this host; stop it first (kill {owner.get("pid")})'
              if force
              else 'if that run is gone, rerun with --force_unlock'
          )
          raise errors.UserInputError(
              f'--workdir={self.workdir!r} is in use by another run ({describe(owner)}); one '
              f'workdir takes one run at a time. Wait for it to end or pass another --workdir; '
              f'{hint}.'
          )
      logging.warning(
          'Taking over the lock %s of %s (%s).',
          self.path,
          describe(owner) if owner else 'an unreadable lock',
          'forced' if force and owner_alive(owner) else 'stale',
      )
      try:
        paths.remove(self.path)
      except FileNotFoundError:  # another run took over first; create_exclusive decides
        pass
      if paths.create_exclusive(self.path, self._contents()):
        return self._start_heartbeat()
      return self.acquire(False)  # another run took it in between: its line
    except OSError as e:
      raise errors.UserInputError(
          f'--workdir={self.workdir!r} cannot be written ({type(e).__name__}: {e}); pass a '
          'folder you can write to.'
      ) from e

  def _start_heartbeat(self):
    self._thread = threading.Thread(target=self._beat, name='vit_jax workdir lock', daemon=True)
    self._thread.start()

  def _beat(self):
    while not self._stop.wait(HEARTBEAT_SECONDS):
      try:
        owner = self.read_owner()
        if not owner or owner.get('token') != self._owner['token']:
          logging.error(
              'The workdir lock %s was taken by %s; this run no longer holds it.',
              self.path,
              describe(owner) if owner else 'nobody',
          )
          return
        paths.write_bytes(self.path, self._contents())
      except Exception as e:
        logging.warning('Could not renew the workdir lock %s: %s', self.path, e)

  def release(self):
    """Stops the heartbeat and removes the lock if it is still this run's."""
    self._stop.set()
    if self._thread is not None:
      self._thread.join()
    try:
      owner = self.read_owner()
      if owner and owner.get('token') == self._owner['token']:
        paths.remove(self.path)
    except OSError as e:
      logging.warning('Could not remove the workdir lock %s: %s', self.path, e)


class Claim:
  """A workdir this run holds; `started()` marks the point from which it writes there."""

  def __init__(self, workdir, lock, created):
    self.workdir, self.lock, self.created, self.is_started = workdir, lock, created, False

  def started(self):
    self.is_started = True


def _agree(problem):
  """Process 0's `problem` (a string, '' for none), on every process."""
  import jax

  if jax.process_count() == 1:
    return problem
  from jax.experimental import multihost_utils
  import numpy as np

  data = np.zeros(4096, np.uint8)
  encoded = problem.encode('utf-8')[:4096]
  data[: len(encoded)] = np.frombuffer(encoded, np.uint8)
  data = np.asarray(multihost_utils.broadcast_one_to_all(data))
  return bytes(data).rstrip(b'\0').decode('utf-8', 'replace')


@contextlib.contextmanager
def claim(workdir, force_unlock=False):
  """Checks and locks `workdir` (process 0) for the `with` block; yields a Claim.

  When the block fails before `Claim.started()`, a workdir this call created is removed again,
  so a refused run leaves nothing behind; the lock is released in any case.
  """
  import jax

  lock, created, problem, unexpected = None, False, '', None
  if jax.process_index() == 0:
    try:
      refuse_unless_ours(workdir)
      created = not paths.exists(workdir)
      lock = Lock(workdir)
      lock.acquire(force_unlock)
    except errors.UserInputError as e:
      problem, created, lock = str(e), False, None
    except Exception as e:
      problem, unexpected, created, lock = (
          f'process 0 failed: {type(e).__name__}: {e}',
          e,
          False,
          None,
      )
  problem = _agree(problem)
  if unexpected is not None:
    raise unexpected
  if problem:
    raise errors.UserInputError(problem)
  held = Claim(workdir, lock, created)
  try:
    yield held
  finally:
    if lock is not None:
      lock.release()
      if created and not held.is_started:
        try:
          if not paths.listdir(workdir):
            paths.remove_empty_dir(workdir)
        except OSError as e:
          logging.warning('Could not remove the empty workdir %s: %s', workdir, e)
