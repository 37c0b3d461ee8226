"""The one path layer: every path a user gives (local disk or `gs://`) is read and written here.

Nothing else in vit_jax calls `open`, `os.listdir`, `os.makedirs`, `os.rename` or
`np.load(path)` on a user path. Paths stay strings; `etils.epath` does the work.

Cloud Storage goes through `gcsfs` (fsspec), also for Orbax, which uses `epath` too: this
module sets `EPATH_USE_TF=0` (unless the environment sets it) before `epath` picks a backend.
`gcsfs` honours `STORAGE_EMULATOR_HOST`, so the whole path is testable against an emulator;
TensorFlow's own GCS client (tf.data reading TFDS records or image files) has its endpoint
compiled in and cannot be pointed at one.
"""
import os

os.environ.setdefault('EPATH_USE_TF', '0')

from etils import epath  # pylint: disable=g-import-not-at-top,g-bad-import-order

from vit_jax import errors  # pylint: disable=g-import-not-at-top

REMOTE_PREFIXES = ('gs://', 's3://', 'az://')


def is_remote(path):
  """Whether `path` is on an object store (no local file, no append, no atomic rename)."""
  return os.fspath(path).startswith(REMOTE_PREFIXES)


def as_path(path):
  """An `epath.Path`; `~` expanded for local paths."""
  path = os.fspath(path)
  return epath.Path(path if is_remote(path) else os.path.expanduser(path))


def join(path, *parts):
  return os.fspath(as_path(path).joinpath(*parts))


def parent(path):
  return os.fspath(as_path(path).parent)


def basename(path):
  return as_path(path).name


def exists(path):
  return as_path(path).exists()


def isdir(path):
  return as_path(path).is_dir()


def listdir(path):
  """Sorted names (not paths) of the entries of a directory."""
  return sorted(p.name for p in as_path(path).iterdir())


def makedirs(path):
  as_path(path).mkdir(parents=True, exist_ok=True)


def read_bytes(path):
  """The file's bytes; FileNotFoundError naming the path when it is missing."""
  p = as_path(path)
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
  if not exists(path):
    raise errors.MissingInputError(f'{os.fspath(path)!r} does not exist')
  return as_path(path).open('rb')


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


def remove(path):
  as_path(path).unlink()


def move(src, dst):
  """Moves a file or directory tree (on object stores: copy, then delete)."""
  makedirs(parent(dst))
  as_path(src).rename(as_path(dst))
