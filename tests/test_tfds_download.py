"""config.tfds_download: an unprepared TFDS dataset is downloaded, or a clear error in < 30 s.

The "offline" here is real: hosts that refuse connections (a stopped port on 127.0.0.1, or a
proxy there that nothing listens on), so the tests give the same answer on a machine with
network. tfds's own retries are cut to 0 in these tests: if the probe ever let a download
through, a test fails within seconds instead of waiting tfds's ~200 s.
"""

import hashlib
import http.server
import importlib.util
import socket
import sys
import threading
import time

import ml_collections
import numpy as np
import pytest
import tensorflow_datasets as tfds
from tensorflow_datasets.core.download import downloader

from vit_jax import errors
from vit_jax import input_pipeline


def _config(**overrides):
  config = ml_collections.ConfigDict(
      dict(
          dataset='cifar10',
          tfds_data_dir=None,
          tfds_manual_dir=None,
          tfds_download=True,
          fashion_mnist_dir='/nonexistent/fashion-mnist',
      )
  )
  config.update_from_flattened_dict(overrides)
  return config


def _dead_port():
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


@pytest.fixture(autouse=True)
def no_tfds_retries(monkeypatch):
  monkeypatch.setattr(downloader, 'MAX_RETRIES', 0)


@pytest.fixture
def dead_proxy(monkeypatch):
  """Every http(s) connection of this process goes to a proxy that refuses it: offline."""
  proxy = f'http://127.0.0.1:{_dead_port()}'
  for name in ('http_proxy', 'https_proxy', 'HTTP_PROXY', 'HTTPS_PROXY'):
    monkeypatch.setenv(name, proxy)
  for name in ('no_proxy', 'NO_PROXY'):
    monkeypatch.delenv(name, raising=False)
  return proxy


def _offline_error(config):
  start = time.time()
  with pytest.raises(errors.UserInputError) as e:
    input_pipeline.get_dataset_info(config, 'train')
  seconds = time.time() - start
  assert seconds < 30, seconds
  return str(e.value)


def test_offline_cifar10_is_a_clear_error_within_30_s(tmp_path, dead_proxy):
  message = _offline_error(_config(tfds_data_dir=str(tmp_path)))
  assert "config.dataset='cifar10'" in message and repr(str(tmp_path)) in message, message
  assert 'https://www.cs.toronto.edu' in message and dead_proxy[len('http://') :] in message
  assert 'download_and_prepare' in message and 'copy the folder' in message, message
  assert 'config.tfds_download=False' in message, message
  assert 'dataset-fashion-mnist' not in message
  assert not list(tmp_path.iterdir())  # nothing half-prepared


def test_offline_fashion_mnist_names_the_debian_files(tmp_path, dead_proxy):
  del dead_proxy
  message = _offline_error(_config(dataset='fashion_mnist', tfds_data_dir=str(tmp_path)))
  assert 'http://fashion-mnist.s3-website' in message, message
  assert 'apt-get install dataset-fashion-mnist' in message, message
  assert "config.fashion_mnist_dir (now '/nonexistent/fashion-mnist')" in message, message
  assert 'config.tfds_download=False' in message, message


def test_this_machine_offline_without_a_proxy(tmp_path):
  """The real network of this machine, as the task's offline CI has it (skipped online)."""
  from vit_jax.paths import downloads

  if downloads.unreachable('https://www.cs.toronto.edu', 5) is None:
    pytest.skip('this machine reaches www.cs.toronto.edu: it would download cifar10')
  message = _offline_error(_config(tfds_data_dir=str(tmp_path)))
  assert 'https://www.cs.toronto.edu' in message and 'tfds_download=False' in message, message


def test_tfds_download_false_is_the_old_error_at_once(tmp_path, dead_proxy):
  del dead_proxy
  start = time.time()
  with pytest.raises(
      errors.UserInputError, match=r'not prepared.*tfds_download=False.*' r'download_and_prepare'
  ):
    input_pipeline.get_dataset_info(
        _config(tfds_data_dir=str(tmp_path), tfds_download=False), 'train'
    )
  assert time.time() - start < 5


def test_manual_download_dataset_names_tfds_manual_dir(tmp_path):
  with pytest.raises(errors.UserInputError, match='config.tfds_manual_dir'):
    input_pipeline.get_dataset_info(
        _config(dataset='imagenet2012', tfds_data_dir=str(tmp_path)), 'train'
    )


# ------------------------------------------- a tiny TFDS dataset downloaded from 127.0.0.1
_BUILDER = """
import numpy as np
import tensorflow_datasets as tfds


class {cls}(tfds.core.GeneratorBasedBuilder):
  VERSION = tfds.core.Version('1.0.0')

  def _info(self):
    return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({{
        'image': tfds.features.Image(shape=(8, 8, 1)),
        'label': tfds.features.ClassLabel(num_classes=2)}}))

  def _split_generators(self, dl_manager):
    path = dl_manager.download({url!r})
    return {{'train': self._generate_examples(path, 'train'),
            'test': self._generate_examples(path, 'test')}}

  def _generate_examples(self, path, split):
    with np.load(path) as data:
      images, labels = data[split + '_images'], data[split + '_labels']
    for i, (image, label) in enumerate(zip(images, labels)):
      yield i, {{'image': image, 'label': label}}
"""


def _tiny_dataset(tmp_path, cls, url, data):
  """Registers TFDS dataset `cls` (snake_case name) whose one file is `url`, with its size and
  sha256 in the checksums.tsv beside the module, as tfds's own datasets have them."""
  folder = tmp_path / cls
  folder.mkdir()
  (folder / f'{cls}.py').write_text(_BUILDER.format(cls=cls, url=url))
  (folder / 'checksums.tsv').write_text(
      f'{url}\t{len(data)}\t{hashlib.sha256(data).hexdigest()}\tdata.npz\n'
  )
  spec = importlib.util.spec_from_file_location(cls, folder / f'{cls}.py')
  module = sys.modules[cls] = importlib.util.module_from_spec(spec)  # tfds finds its file
  spec.loader.exec_module(module)
  return getattr(module, cls).name


def _npz(tmp_path):
  rng = np.random.default_rng(0)
  arrays = {
      f'{s}_images': rng.integers(0, 255, (n, 8, 8, 1), np.uint8)
      for s, n in (('train', 6), ('test', 4))
  }
  arrays.update(train_labels=np.arange(6) % 2, test_labels=np.arange(4) % 2)
  np.savez(tmp_path / 'data.npz', **arrays)
  return (tmp_path / 'data.npz').read_bytes()


def test_unprepared_dataset_is_downloaded_and_prepared(tmp_path):
  data = _npz(tmp_path)
  requests = []

  class Handler(http.server.BaseHTTPRequestHandler):

    def do_GET(self):
      requests.append(self.path)
      self.send_response(200)
      self.send_header('Content-Length', str(len(data)))
      self.end_headers()
      self.wfile.write(data)

    def log_message(self, *args):
      del args

  server = http.server.ThreadingHTTPServer(('127.0.0.1', 0), Handler)
  thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
  thread.start()
  try:
    url = f'http://127.0.0.1:{server.server_address[1]}/files/data.npz'
    name = _tiny_dataset(tmp_path, 'VitJaxTinyOnline', url, data)
    config = _config(dataset=name, tfds_data_dir=str(tmp_path / 'tfds'))
    assert tfds.builder_cls(name).url_infos  # the probed path, not the unprobed one
    info = input_pipeline.get_dataset_info(config, 'train')
    assert info['num_examples'] == 6 and info['num_classes'] == 2
    assert requests == ['/files/data.npz']
    assert input_pipeline.get_dataset_info(config, 'test')['num_examples'] == 4
    assert requests == ['/files/data.npz']  # prepared once
  finally:
    server.shutdown()
    server.server_close()
  builder = tfds.builder(name, data_dir=str(tmp_path / 'tfds'))
  test = builder.as_data_source(split='test')  # prepared as array_record
  assert sorted(int(test[i]['label']) for i in range(len(test))) == [0, 0, 1, 1]


def test_unreachable_host_of_a_dataset_is_a_clear_error(tmp_path):
  port = _dead_port()
  name = _tiny_dataset(
      tmp_path, 'VitJaxTinyOffline', f'http://127.0.0.1:{port}/files/data.npz', _npz(tmp_path)
  )
  message = _offline_error(_config(dataset=name, tfds_data_dir=str(tmp_path / 'tfds')))
  assert f'http://127.0.0.1:{port} (127.0.0.1:{port}: [Errno 111] Connection refused)' in message
  assert f"config.dataset='{name}'" in message and 'tfds_download=False' in message
