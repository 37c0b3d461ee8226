"""Read-only remote inputs of the path layer: `https://`, `http://` and `hf://` paths.

`local_copy(path)` returns a local path holding the same bytes; vit_jax/paths.py sends
every read of such a path through it. Nothing here writes to a remote.

- `https://host/dir/file.npz` (or `http://`): downloaded once into
  `$VIT_JAX_CACHE/downloads` (default `~/.cache/vit_jax/downloads`) as `<hash>-<file>`,
  the hash being of the whole URL so two URLs never share a file. The bytes go to a hidden
  `.part` file that is renamed only once complete, so an interrupted or short download never
  looks cached. A cached file is used without any request (also offline).
- `hf://ORG/NAME[@REVISION]`: a Hugging Face Hub model repo; the local snapshot folder
  with only what a checkpoint needs (`config.json`, safetensors, Flax msgpack, npz; PyTorch
  `.bin` only when none of those is there). `hf://ORG/NAME[@REVISION]/path/in/repo` is one
  file. Both go through `huggingface_hub`, so its cache (`HF_HUB_CACHE`, `HF_HOME`),
  `HF_TOKEN` and `HF_HUB_OFFLINE=1` work as usual. REVISION is a branch, tag or commit
  without `/`.
"""

import hashlib
import http.client
import os
import socket
import ssl
import sys
import threading
import urllib.error
import urllib.parse
import urllib.request
import uuid

from absl import logging

from vit_jax import errors

URL_PREFIXES = ('https://', 'http://')
HF_PREFIX = 'hf://'
SCHEMES = URL_PREFIXES + (HF_PREFIX,)
TIMEOUT_S = 60  # per connect and per read of a chunk, not for the whole file
_CHUNK = 1 << 20

# Files of a Hub repo that a checkpoint can need (huggingface_hub's fnmatch patterns; `*`
# also matches `/`). PyTorch weights only come when none of _WEIGHTS is in the repo.
_CONFIG = ('config.json',)
_WEIGHTS = (
    '*.safetensors',
    '*.safetensors.index.json',
    'flax_model*.msgpack',
    'flax_model.msgpack.index.json',
    '*.npz',
)
_TORCH = ('pytorch_model*.bin', 'pytorch_model.bin.index.json')


def is_download(path):
  """Whether `path` is read through `local_copy` (an http(s) URL or an hf:// path)."""
  return os.fspath(path).startswith(SCHEMES)


def cache_dir():
  """Where https:// downloads are kept: $VIT_JAX_CACHE/downloads (default ~/.cache/vit_jax)."""
  root = os.environ.get('VIT_JAX_CACHE') or '~/.cache/vit_jax'
  return os.path.join(os.path.expanduser(root), 'downloads')


def local_copy(path):
  """A local path with the contents of `path`; local and gs:// paths come back unchanged."""
  path = os.fspath(path)
  if path.startswith(URL_PREFIXES):
    return _url_copy(path)
  if path.startswith(HF_PREFIX):
    return _hf_copy(path)
  return path


def unreachable(url, timeout=5.0):
  """None if a TCP connection to the host of `url` (or to its proxy) opens within `timeout`
  seconds, else why not. For failing fast offline, where a library would retry for minutes.
  Name resolution runs in a thread too, since getaddrinfo has no timeout of its own."""
  parts = urllib.parse.urlsplit(url)
  host, port = parts.hostname, parts.port or (80 if parts.scheme == 'http' else 443)
  proxy = urllib.request.getproxies().get('http' if parts.scheme == 'http' else 'https')
  if proxy and not urllib.request.proxy_bypass(host):
    proxy = urllib.parse.urlsplit(proxy if '://' in proxy else f'http://{proxy}')
    host, port = proxy.hostname, proxy.port or 80
  outcome = []

  def probe():
    try:
      socket.create_connection((host, port), timeout=timeout).close()
      outcome.append(None)
    except OSError as e:
      outcome.append(e)

  thread = threading.Thread(target=probe, daemon=True)
  thread.start()
  thread.join(timeout)
  if not outcome:
    return f'no answer from {host}:{port} within {timeout:g} s'
  return None if outcome[0] is None else f'{host}:{port}: {outcome[0]}'


# ------------------------------------------------------------------------------ http(s) URLs
def cache_name(url):
  """`<12 hex digits of sha256(url)>-<the URL's file name>`: distinct URLs, distinct files."""
  digest = hashlib.sha256(url.encode('utf-8')).hexdigest()[:12]
  name = urllib.parse.unquote(urllib.parse.urlsplit(url).path.rstrip('/').rsplit('/', 1)[-1])
  name = ''.join(c if c.isalnum() or c in '._-' else '_' for c in name).lstrip('.')
  return f'{digest}-{name or "download"}'


def _url_copy(url):
  if not urllib.parse.urlsplit(url).hostname:
    raise errors.UserInputError(f'{url!r} is not a URL with a host, e.g. https://host/file.npz')
  target = os.path.join(cache_dir(), cache_name(url))
  if os.path.isfile(target):
    return target
  os.makedirs(cache_dir(), exist_ok=True)
  part = os.path.join(cache_dir(), f'.{cache_name(url)}.part-{os.getpid()}-{uuid.uuid4().hex[:8]}')
  logging.info('Downloading %s to %s', url, target)
  try:
    _fetch(url, part)
    os.replace(part, target)
  finally:
    if os.path.exists(part):
      os.remove(part)
  return target


def _fetch(url, part):
  """Streams `url` into the file `part`; UserInputError for every way it can fail."""
  request = urllib.request.Request(url, headers={'User-Agent': 'vit_jax'})
  try:
    response = urllib.request.urlopen(request, timeout=TIMEOUT_S)  # closed below (with)
  except urllib.error.HTTPError as e:
    raise _http_error(url, e.code, e.reason) from e
  except urllib.error.URLError as e:
    raise _unreachable(url, e.reason) from e
  except (OSError, http.client.HTTPException) as e:
    raise _unreachable(url, e) from e
  with response:
    length = response.headers.get('Content-Length')
    expected = int(length) if length and length.isdigit() else None
    received = 0
    try:
      with open(part, 'wb') as f, _progress(url, expected) as bar:
        while chunk := response.read(_CHUNK):
          f.write(chunk)
          received += len(chunk)
          bar.update(len(chunk))
    except (OSError, http.client.HTTPException) as e:  # reset, timeout, IncompleteRead
      raise errors.UserInputError(
          f'Downloading {url!r} broke off after {received} of {expected or "?"} bytes ({e!r}); '
          'nothing was cached. Run again to retry.'
      ) from e
  if expected is not None and received != expected:
    raise errors.UserInputError(
        f'Downloading {url!r} gave {received} bytes but the server announced {expected} '
        '(Content-Length): the body was cut short; nothing was cached. Run again to retry.'
    )


def _progress(url, total):
  import tqdm

  return tqdm.tqdm(
      total=total,
      unit='B',
      unit_scale=True,
      unit_divisor=1024,
      desc=cache_name(url).split('-', 1)[1],
      file=sys.stderr,
      disable=not sys.stderr.isatty(),
  )


def _http_error(url, code, reason):
  error = errors.MissingInputError if code in (404, 410) else errors.UserInputError
  hint = {
      401: 'the server wants credentials; download it by hand and use the local file',
      403: 'access is denied; check the URL, or download it by hand and use the local file',
      404: 'no such file on the server; check the URL',
      410: 'the file was removed from the server; check the URL',
  }.get(code, 'a server problem; try again later or use a local copy')
  return error(f'Downloading {url!r} failed: HTTP {code} {reason} ({hint}).')


def _unreachable(url, reason):
  if isinstance(reason, ssl.SSLError):
    return errors.UserInputError(
        f'Downloading {url!r} failed: TLS error ({reason}); check the URL and the system '
        'certificates, or download it by hand and use the local file.'
    )
  kind = (
      'no network (the host name does not resolve)'
      if isinstance(reason, socket.gaierror)
      else 'the host cannot be reached'
  )
  return errors.UserInputError(
      f'Downloading {url!r} failed: {kind}: {reason}. This machine looks offline (or the '
      f'server is down). A file already in the cache {cache_dir()!r} is used without network: '
      f'download it on a machine with network and copy it to '
      f'{os.path.join(cache_dir(), cache_name(url))!r}, or use a local path instead of the URL.'
  )


# ---------------------------------------------------------------------------- hf:// Hub paths
def parse_hf(path):
  """`hf://ORG/NAME[@REV][/file]` -> (repo_id, revision or None, file or None)."""
  parts = path[len(HF_PREFIX) :].strip('/').split('/')
  if len(parts) < 2 or not all(parts[:2]):
    raise errors.UserInputError(
        f'{path!r} is not a Hugging Face Hub path; write hf://ORG/NAME for a model repo '
        '(optionally hf://ORG/NAME@REVISION) or hf://ORG/NAME/path/in/repo for one file.'
    )
  name, _, revision = parts[1].partition('@')
  return f'{parts[0]}/{name}', revision or None, '/'.join(parts[2:]) or None


def _hf_copy(path):
  repo_id, revision, filename = parse_hf(path)
  import huggingface_hub as hub
  from huggingface_hub import constants
  # huggingface_hub retries an unreachable Hub for ~25 s before it says a file is not cached;
  # a probe of a few seconds sends it straight to its cache instead (HF_HUB_OFFLINE=1 too).
  offline = constants.HF_HUB_OFFLINE or unreachable(constants.ENDPOINT)
  get = dict(revision=revision, local_files_only=bool(offline))
  try:
    if filename:
      return hub.hf_hub_download(repo_id, filename, **get)
    folder = hub.snapshot_download(repo_id, allow_patterns=list(_CONFIG + _WEIGHTS), **get)
    if not _has_weights(folder):
      folder = hub.snapshot_download(
          repo_id, allow_patterns=list(_CONFIG + _WEIGHTS + _TORCH), **get
      )
  except Exception as e:
    error = _hf_error(path, e, offline)
    if error is None:
      raise
    raise error from e
  if not _has_weights(folder, torch=True):
    raise errors.UserInputError(
        f'{path!r} ({folder!r}) has no checkpoint weights: none of '
        f'{_WEIGHTS + _TORCH}. Check the repo name, or name one file: hf://{repo_id}/FILE.'
    )
  return folder


def _has_weights(folder, torch=False):
  """Whether the snapshot folder holds weights (PyTorch .bin counts only with `torch`)."""
  import fnmatch

  patterns = _WEIGHTS + (_TORCH if torch else ())
  for root, _, files in os.walk(folder):
    rel = os.path.relpath(root, folder)
    for name in files:
      name = name if rel == '.' else f'{rel}/{name}'
      if any(fnmatch.fnmatchcase(name, p) for p in patterns):
        return True
  return False


def _hf_error(path, e, offline):
  """One UserInputError naming the hf path, the Hub cache and the way out (None: a bug)."""
  from huggingface_hub import constants
  from huggingface_hub import errors as hub_errors

  cache = constants.HF_HUB_CACHE
  if isinstance(e, hub_errors.GatedRepoError):
    return errors.UserInputError(
        f'{path!r}: the repo is gated; accept its terms on the Hub and log in '
        '(`hf auth login` or the HF_TOKEN environment variable).'
    )
  if isinstance(e, hub_errors.RepositoryNotFoundError):
    return errors.MissingInputError(
        f'{path!r}: no such model repo on the Hub (or it is private: log in with `hf auth '
        'login` or set HF_TOKEN); check ORG/NAME.'
    )
  if isinstance(e, hub_errors.RevisionNotFoundError):
    return errors.MissingInputError(f'{path!r}: the repo has no such revision; check @REVISION.')
  if isinstance(e, hub_errors.LocalEntryNotFoundError):  # offline and not (fully) cached
    why = (
        'HF_HUB_OFFLINE=1 is set'
        if offline is True
        else f'the Hub {constants.ENDPOINT} cannot be reached ({offline or "no network?"})'
    )
    repo_id = parse_hf(path)[0]
    return errors.UserInputError(
        f'{path!r} is not in the Hugging Face cache {cache!r} and {why}. Download it once '
        f'with network (`hf download {repo_id}`, or a run with network access) and copy that '
        f"cache's models--{repo_id.replace('/', '--')} folder into {cache!r} (HF_HUB_CACHE or "
        'HF_HOME choose the cache), or use a local path. (Offline, a repo or file missing '
        'from the Hub looks the same.)' + ('' if offline else f' {e}')
    )
  if isinstance(e, hub_errors.EntryNotFoundError):
    return errors.MissingInputError(
        f'{path!r}: the repo has no such file; check the path in the repo.'
    )
  if isinstance(e, (hub_errors.HFValidationError, ValueError)):
    return errors.UserInputError(f'{path!r} is not a valid Hub path: {e}')
  if isinstance(e, OSError):
    return errors.UserInputError(
        f'{path!r}: the Hub download failed ({e!r}); Hugging Face cache: {cache!r}. '
        'Check the network and try again, or use a local path.'
    )
  return None
