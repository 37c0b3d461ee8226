"""The one path layer: every path a user gives (local disk, `gs://`, `https://`, `hf://`) is
read and written here.

Nothing else in vit_jax calls `open`, `os.listdir`, `os.makedirs`, `os.rename` or
`np.load(path)` on a user path. Paths stay strings; `etils.epath` does the work.

Cloud Storage goes through `gcsfs` (fsspec), also for Orbax, which uses `epath` too: this
module sets `EPATH_USE_TF=0` (unless the environment sets it) before `epath` picks a backend.
`gcsfs` honours `STORAGE_EMULATOR_HOST`, so the whole path is testable against an emulator;
TensorFlow's own GCS client (tf.data reading TFDS records or image files) has its endpoint
compiled in and cannot be pointed at one.

`https://`, `http://` and `hf://` paths are read-only inputs (pretrained checkpoints): the
readers here (`exists`, `isdir`, `listdir`, `read_bytes`, `open_binary`) work on the local
copy `local_copy(path)` makes once (vit_jax/paths/downloads.py), so `exists` may download;
it is False only when the server or the Hub says there is no such file, and raises a clear
error when it cannot tell (offline, denied). Writers raise a clear error for them.
`join`, `parent` and `basename` treat them as strings (`hf://org/name` joined with
`config.json` is that file of the repo).
"""

import contextlib
import os

os.environ.setdefault('EPATH_USE_TF', '0')

from etils import epath

from vit_jax import errors
from vit_jax.paths import downloads
from vit_jax.runtime import gcs_credentials

REMOTE_PREFIXES = ('gs://', 's3://', 'az://')


def local_copy(path):
  """A local path with the contents of an `https://`, `http://` or `hf://` path (downloaded
  once, see vit_jax/paths/downloads.py); local and `gs://` paths come back unchanged."""
  return downloads.local_copy(path)


def is_remote(path):
  """Whether `path` is on an object store (no local file, no append, no atomic rename)."""
  return os.fspath(path).startswith(REMOTE_PREFIXES)


def as_path(path):
  """An `epath.Path`; `~` expanded for local paths. Not for https:// or hf:// (read-only).
  A gs:// path without Google Cloud credentials is a one-line error
  (vit_jax/runtime/gcs_credentials.py)."""
  path = os.fspath(path)
  if downloads.is_download(path):
    raise errors.UserInputError(
        f'{path!r} is a read-only download; write to a local or gs:// path instead.'
    )
  if path.startswith('gs://'):
    gcs_credentials.check(path)
  return epath.Path(path if is_remote(path) else os.path.expanduser(path))


def _readable(path):
  """An `epath.Path` to read: https:// and hf:// paths are first copied here (local_copy)."""
  return as_path(local_copy(path))


def join(path, *parts):
  if downloads.is_download(path):
    return '/'.join([os.fspath(path).rstrip('/')] + [p.strip('/') for p in parts])
  return os.fspath(as_path(path).joinpath(*parts))


def parent(path):
  if downloads.is_download(path):
    return os.fspath(path).rstrip('/').rsplit('/', 1)[0]
  return os.fspath(as_path(path).parent)


def basename(path):
  if downloads.is_download(path):
    return os.fspath(path).rstrip('/').rsplit('/', 1)[-1]
  return as_path(path).name


def exists(path):
  """Whether the file or folder exists (https:// and hf://: downloads it, see above)."""
  if downloads.is_download(path):
    try:
      local_copy(path)
    except errors.MissingInputError:
      return False
    return True
  return as_path(path).exists()


def isdir(path):
  return _readable(path).is_dir()


def listdir(path):
  """Sorted names (not paths) of the entries of a directory."""
  return sorted(p.name for p in _readable(path).iterdir())


def makedirs(path):
  as_path(path).mkdir(parents=True, exist_ok=True)


def read_bytes(path):
  """The file's bytes; FileNotFoundError naming the path when it is missing."""
  p = _readable(path)
  try:
    return p.read_bytes()
  except FileNotFoundError as e:
    raise errors.MissingInputError(f'{os.fspath(path)!r} does not exist') from e
  except IsADirectoryError as e:
    raise errors.UserInputError(f'{os.fspath(path)!r} is a directory, not a file') from e


def read_text(path):
  return read_bytes(path).decode('utf-8')


def open_binary(path):
  """The file opened for reading bytes (seekable, also on gs://: ranged reads), so that
  np.load and friends read what they need instead of a copy of the whole file in memory.
  Use it as a context manager."""
  p = _readable(path)
  if not p.exists():
    raise errors.MissingInputError(f'{os.fspath(path)!r} does not exist')
  return p.open('rb')


def write_bytes(path, data):
  """Writes a whole file. Local: to a temporary name, then renamed over (never half-written)."""
  p = as_path(path)
  p.parent.mkdir(parents=True, exist_ok=True)
  if is_remote(path):  # an object store commits the object whole on close
    p.write_bytes(data)
    return
  tmp = p.parent / f'.{p.name}.tmp-{os.getpid()}'
  tmp.write_bytes(data)
  os.replace(os.fspath(tmp), os.fspath(p))


@contextlib.contextmanager
def open_write(path):
  """A file opened for writing bytes as a stream, for files too large to hold in memory.
  Local: written to a temporary name and renamed over on success (removed on failure);
  object stores commit the object whole on close."""
  p = as_path(path)
  p.parent.mkdir(parents=True, exist_ok=True)
  if is_remote(path):
    with p.open('wb') as f:
      yield f
    return
  tmp = p.parent / f'.{p.name}.tmp-{os.getpid()}'
  try:
    with tmp.open('wb') as f:
      yield f
    os.replace(os.fspath(tmp), os.fspath(p))
  finally:
    if tmp.exists():
      tmp.unlink()


def write_text(path, text):
  write_bytes(path, text.encode('utf-8'))


def append_bytes(path, data):
  """Appends to a file. Object stores cannot append: the object is rewritten whole."""
  if is_remote(path):
    old = read_bytes(path) if exists(path) else b''
    write_bytes(path, old + data)
    return
  p = as_path(path)
  p.parent.mkdir(parents=True, exist_ok=True)
  with p.open('ab') as f:
    f.write(data)


def create_exclusive(path, data):
  """Writes a new file whole, only if `path` does not exist yet; whether it did.

  Atomic against another writer: local files with O_EXCL, Cloud Storage objects with the
  precondition ifGenerationMatch=0 (two writers: exactly one succeeds).
  """
  p = as_path(path)
  p.parent.mkdir(parents=True, exist_ok=True)
  if is_remote(path):
    import fsspec

    try:
      fsspec.filesystem(os.fspath(path).split('://', 1)[0]).pipe_file(
          os.fspath(path), data, mode='create'
      )
    except FileExistsError:
      return False
    return True
  try:
    fd = os.open(os.fspath(p), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
  except FileExistsError:
    return False
  with os.fdopen(fd, 'wb') as f:
    f.write(data)
  return True


def remove(path):
  as_path(path).unlink()


def remove_empty_dir(path):
  """Removes a folder that holds nothing (object stores have no empty folders)."""
  if not is_remote(path):
    as_path(path).rmdir()


def move(src, dst):
  """Moves a file or directory tree (on object stores: copy, then delete)."""
  makedirs(parent(dst))
  as_path(src).rename(as_path(dst))
