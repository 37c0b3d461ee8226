"""https:// and hf:// paths: a real HTTP server on 127.0.0.1, a real Hugging Face cache layout."""

import collections
import hashlib
import http.server
import json
import os
import pathlib
import socket
import subprocess
import sys
import threading
import time

import jax
import numpy as np
import pytest

from vit_jax import errors
from vit_jax import paths
from vit_jax.paths import downloads

PAYLOAD = np.arange(300_000, dtype=np.uint8).tobytes()  # several chunks of the progress loop


class _Handler(http.server.BaseHTTPRequestHandler):
  """/files/NAME: PAYLOAD; /short/NAME: Content-Length 1000, 10 bytes; anything else: 404."""

  counts = None  # set per server

  def do_GET(self):
    self.counts[self.path] += 1
    if self.path.startswith('/files/'):
      self.send_response(200)
      self.send_header('Content-Length', str(len(PAYLOAD)))
      self.end_headers()
      self.wfile.write(PAYLOAD)
    elif self.path.startswith('/short/'):
      self.send_response(200)
      self.send_header('Content-Length', '1000')
      self.end_headers()
      self.wfile.write(b'x' * 10)
      self.close_connection = True
    else:
      self.send_error(404)

  def log_message(self, *args):
    del args


class _Server:
  """A real HTTP server in a thread; `counts[path]` is the number of requests it answered."""

  def __init__(self):
    self.counts = collections.Counter()
    handler = type('Handler', (_Handler,), {'counts': self.counts})
    self._httpd = http.server.ThreadingHTTPServer(('127.0.0.1', 0), handler)
    self.url = f'http://127.0.0.1:{self._httpd.server_address[1]}'
    self._thread = threading.Thread(target=self._httpd.serve_forever, args=(0.05,), daemon=True)
    self._thread.start()

  def stop(self):
    self._httpd.shutdown()
    self._httpd.server_close()
    self._thread.join()


@pytest.fixture
def server(tmp_path, monkeypatch):
  monkeypatch.setenv('VIT_JAX_CACHE', str(tmp_path / 'cache'))
  s = _Server()
  yield s
  s.stop()


def _cached_files(tmp_path):
  folder = tmp_path / 'cache' / 'downloads'
  return sorted(os.listdir(folder)) if folder.exists() else []


def test_download_once_then_from_cache(server, tmp_path):
  url = f'{server.url}/files/vit%20b16.npz'
  local = paths.local_copy(url)
  assert open(local, 'rb').read() == PAYLOAD
  assert local.startswith(str(tmp_path / 'cache' / 'downloads'))
  assert os.path.basename(local).endswith('-vit_b16.npz')
  assert paths.local_copy(url) == local
  assert server.counts['/files/vit%20b16.npz'] == 1  # the second call made no request
  assert _cached_files(tmp_path) == [os.path.basename(local)]  # no .part file left


def test_same_file_name_under_different_urls_does_not_collide(server):
  a = paths.local_copy(f'{server.url}/files/a/model.npz')
  b = paths.local_copy(f'{server.url}/files/b/model.npz')
  assert a != b and os.path.basename(a).endswith('-model.npz')


def test_404_is_one_clear_error_naming_the_url(server):
  url = f'{server.url}/nothing/here.npz'
  with pytest.raises(errors.MissingInputError, match=r'HTTP 404') as e:
    paths.local_copy(url)
  assert url in str(e.value)
  assert not paths.exists(url)  # 404: a file that does not exist


def test_short_body_is_an_error_and_caches_nothing(server, tmp_path):
  url = f'{server.url}/short/model.npz'
  with pytest.raises(errors.UserInputError, match=r'10 bytes.*1000.*cut short') as e:
    paths.local_copy(url)
  assert url in str(e.value)
  assert _cached_files(tmp_path) == []
  with pytest.raises(errors.UserInputError, match='cut short'):  # still not cached
    paths.local_copy(url)
  assert server.counts['/short/model.npz'] == 2


def test_stopped_server_offline_error_unless_cached(server, tmp_path):
  cached = paths.local_copy(f'{server.url}/files/kept.npz')
  server.stop()
  assert paths.local_copy(f'{server.url}/files/kept.npz') == cached
  url = f'{server.url}/files/other.npz'
  start = time.time()
  with pytest.raises(errors.UserInputError, match='offline') as e:
    paths.local_copy(url)
  assert time.time() - start < 5
  message = str(e.value)
  assert url in message and str(tmp_path / 'cache' / 'downloads') in message
  assert 'Connection refused' in message
  with pytest.raises(errors.UserInputError, match='offline'):
    paths.exists(url)  # cannot tell: not False
  server.__init__()  # a fresh server, so that the fixture can stop it


def test_path_layer_reads_urls_and_refuses_writes(server):
  url = f'{server.url}/files/weights.npz'
  assert paths.exists(url) and not paths.isdir(url)
  assert paths.read_bytes(url) == PAYLOAD
  with paths.open_binary(url) as f:
    assert f.read(5) == PAYLOAD[:5]
  assert server.counts['/files/weights.npz'] == 1
  assert paths.join(server.url, 'files', 'a.npz') == f'{server.url}/files/a.npz'
  assert paths.basename(url) == 'weights.npz'
  assert paths.parent(url) == f'{server.url}/files'
  with pytest.raises(errors.UserInputError, match='read-only'):
    paths.write_bytes(url, b'')


# ---------------------------------------------------------------------------------- hf://
COMMIT = 'a' * 40


def _add_repo(cache, repo_id, files, commit=COMMIT):
  """The huggingface_hub cache layout: blobs/<sha256>, snapshots/<commit>/<file> -> blob
  (relative symlink), refs/main holding the commit."""
  repo = cache / ('models--' + repo_id.replace('/', '--'))
  (repo / 'refs').mkdir(parents=True)
  (repo / 'refs' / 'main').write_text(commit)
  (repo / 'blobs').mkdir()
  for name, data in files.items():
    blob = hashlib.sha256(data).hexdigest()
    (repo / 'blobs' / blob).write_bytes(data)
    link = repo / 'snapshots' / commit / name
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(os.path.relpath(repo / 'blobs' / blob, link.parent))
  return repo / 'snapshots' / commit


CONFIG = json.dumps({'hidden_size': 8, 'patch_size': 4}).encode()
WEIGHTS = np.arange(12, dtype=np.float32).tobytes()


@pytest.fixture
def hub_cache(tmp_path, monkeypatch):
  """An offline Hub cache with org/vit (safetensors) and org/torch (pytorch_model.bin only).

  huggingface_hub reads HF_HUB_CACHE / HF_HUB_OFFLINE once, at import: in this process the
  constants are patched; test_env_variables_in_a_fresh_process sets the real variables."""
  from huggingface_hub import constants

  cache = tmp_path / 'hub'
  _add_repo(cache, 'org/vit', {'config.json': CONFIG, 'model.safetensors': WEIGHTS})
  _add_repo(cache, 'org/torch', {'config.json': CONFIG, 'pytorch_model.bin': WEIGHTS})
  monkeypatch.setattr(constants, 'HF_HUB_CACHE', str(cache))
  monkeypatch.setattr(constants, 'HF_HUB_OFFLINE', True)
  return cache


def test_hf_repo_is_the_snapshot_folder(hub_cache):
  folder = paths.local_copy('hf://org/vit')
  assert folder == str(hub_cache / 'models--org--vit' / 'snapshots' / COMMIT)
  assert paths.isdir('hf://org/vit')
  assert paths.listdir('hf://org/vit') == ['config.json', 'model.safetensors']
  assert paths.local_copy('hf://org/torch').endswith(COMMIT)  # no safetensors: .bin is fine


def test_hf_file_and_revision(hub_cache):
  local = paths.local_copy('hf://org/vit/model.safetensors')
  assert open(local, 'rb').read() == WEIGHTS
  assert paths.local_copy(f'hf://org/vit@{COMMIT}/config.json') == str(
      hub_cache / 'models--org--vit' / 'snapshots' / COMMIT / 'config.json'
  )
  assert paths.local_copy('hf://org/vit@main') == paths.local_copy('hf://org/vit')
  assert json.loads(paths.read_text(paths.join('hf://org/vit', 'config.json'))) == {
      'hidden_size': 8,
      'patch_size': 4,
  }


def test_hf_missing_repo_or_file_is_one_clear_error(hub_cache):
  for path in ('hf://org/missing', 'hf://org/vit/flax_model.msgpack', 'hf://org/vit@v2'):
    with pytest.raises(errors.UserInputError) as e:
      paths.local_copy(path)
    message = str(e.value)
    assert path in message and str(hub_cache) in message, message
    assert 'HF_HUB_OFFLINE=1' in message and 'hf download' in message, message
  with pytest.raises(errors.UserInputError, match='not a Hugging Face Hub path'):
    paths.local_copy('hf://just-a-name')


def test_hf_unreachable_hub_uses_the_cache(hub_cache, monkeypatch):
  """No HF_HUB_OFFLINE, the Hub refuses connections: cached files work, others are clear."""
  from huggingface_hub import constants

  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    dead = f'http://127.0.0.1:{s.getsockname()[1]}'
  monkeypatch.setattr(constants, 'HF_HUB_OFFLINE', False)
  monkeypatch.setattr(constants, 'ENDPOINT', dead)
  start = time.time()
  assert open(paths.local_copy('hf://org/vit/model.safetensors'), 'rb').read() == WEIGHTS
  assert paths.local_copy('hf://org/vit').endswith(COMMIT)
  with pytest.raises(errors.UserInputError, match='cannot be reached') as e:
    paths.local_copy('hf://org/missing/model.safetensors')
  assert str(hub_cache) in str(e.value)
  assert time.time() - start < 10


def test_hf_patterns_pick_checkpoint_files():
  from huggingface_hub.utils import filter_repo_objects

  repo = [
      'README.md',
      'config.json',
      'model.safetensors',
      'pytorch_model.bin',
      'tf_model.h5',
      'flax_model.msgpack',
      'onnx/model.onnx',
      'vit.npz',
      'preprocessor_config.json',
  ]
  picked = list(
      filter_repo_objects(repo, allow_patterns=list(downloads._CONFIG + downloads._WEIGHTS))
  )
  assert picked == ['config.json', 'model.safetensors', 'flax_model.msgpack', 'vit.npz']


def test_env_variables_in_a_fresh_process(tmp_path):
  """HF_HUB_CACHE and HF_HUB_OFFLINE=1 set as a user would, before huggingface_hub starts."""
  cache = tmp_path / 'hub'
  _add_repo(cache, 'org/vit', {'config.json': CONFIG, 'model.safetensors': WEIGHTS})
  script = (
      'import json; from vit_jax.paths import downloads as d; out = [d.local_copy("hf://org/vit"),'
      ' d.local_copy("hf://org/vit/config.json")]\n'
      'try: d.local_copy("hf://org/nope")\n'
      'except ValueError as e: out.append(str(e))\n'
      'print(json.dumps(out))'
  )
  env = dict(
      os.environ,
      HF_HUB_CACHE=str(cache),
      HF_HUB_OFFLINE='1',
      PYTHONPATH=os.pathsep.join(
          filter(
              None,
              [
                  os.path.dirname(
                      os.path.dirname(os.path.dirname(os.path.abspath(downloads.__file__)))
                  ),
                  os.environ.get('PYTHONPATH'),
              ],
          )
      ),
  )
  out = subprocess.run(
      [sys.executable, '-c', script],
      env=env,
      check=True,
      capture_output=True,
      text=True,
      timeout=60,
  ).stdout
  folder, config, error = json.loads(out.splitlines()[-1])
  assert folder == str(cache / 'models--org--vit' / 'snapshots' / COMMIT)
  assert open(config, 'rb').read() == CONFIG
  assert 'hf://org/nope' in error and str(cache) in error and 'HF_HUB_OFFLINE=1' in error


def test_checkpoint_loads_from_a_url_once(tmp_path, monkeypatch):
  """checkpoint.load('http://...npz'): the bytes come from a real server once, then the cache."""
  from vit_jax import checkpoint

  fixtures = pathlib.Path(__file__).parent / 'fixtures'
  monkeypatch.setenv('VIT_JAX_CACHE', str(tmp_path / 'cache'))
  requests = []

  class Files(http.server.SimpleHTTPRequestHandler):

    def __init__(self, *args, **kwargs):
      super().__init__(*args, directory=str(fixtures.resolve()), **kwargs)

    def do_GET(self):
      requests.append(self.path)
      super().do_GET()

    def log_message(self, *args):
      del args

  httpd = http.server.ThreadingHTTPServer(('127.0.0.1', 0), Files)
  thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
  thread.start()
  try:
    url = f'http://127.0.0.1:{httpd.server_address[1]}/gap.npz'
    local = checkpoint.load(fixtures / 'gap.npz')
    for _ in range(2):
      remote = checkpoint.load(url)
      assert jax.tree.all(jax.tree.map(np.array_equal, remote, local))
    assert requests == ['/gap.npz']
  finally:
    httpd.shutdown()
    httpd.server_close()
    thread.join()
