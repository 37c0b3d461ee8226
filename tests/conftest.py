"""Test setup: 8 simulated CPU devices compiled for speed of compiling (xla_test_flags.py),
full-precision matmuls, offline tfds."""

import os

# Must happen before jax is imported anywhere in the test process.
from xla_test_flags import xla_flags

os.environ.setdefault('XLA_FLAGS', xla_flags(8))
os.environ.setdefault('JAX_PLATFORMS', 'cpu')
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
os.environ.setdefault('TFDS_DISABLE_GCS', '1')
# libtpu (installed for the TPU compile tests): no TPU VM metadata to look for, and no
# /tmp/libtpu_lockfile contention with other JAX processes (compile-only devices).
for key, value in {
    'TPU_SKIP_MDS_QUERY': '1',
    'TPU_WORKER_HOSTNAMES': 'localhost',
    'TPU_ACCELERATOR_TYPE': 'v5litepod-4',
    'ALLOW_MULTIPLE_LIBTPU_LOAD': '1',
}.items():
  os.environ.setdefault(key, value)

# One persistent XLA compilation cache for the whole run, shared by the xdist workers and
# every subprocess they start (they inherit the environment): the end-to-end tests start
# the same command again (resume after a kill, the second process of two, the sample
# command after training) and would otherwise compile the same programs again. A cache hit
# loads the same executable, so results are unchanged. A size limit turns on jax's file
# lock, so two workers never read an entry while it is being written.
if 'JAX_COMPILATION_CACHE_DIR' not in os.environ:
  import atexit
  import shutil
  import tempfile

  _cache_dir = tempfile.mkdtemp(prefix='vit_jax_tests_xla_cache_')
  os.environ['JAX_COMPILATION_CACHE_DIR'] = _cache_dir
  os.environ.setdefault('JAX_COMPILATION_CACHE_MAX_SIZE', str(8 << 30))
  # Small programs too: a subprocess's eval and init steps are compiled again by the next one.
  os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS', '0.1')
  atexit.register(shutil.rmtree, _cache_dir, ignore_errors=True)

import jax

jax.config.update('jax_default_matmul_precision', 'highest')

import pytest

FASHION_MNIST_DIR = '/usr/share/datasets/fashion-mnist'


def pytest_collection_modifyitems(config, items):
  """The `long` tests first (a stable sort: the same order on every xdist worker). Work
  stealing then balances the short tests around them, instead of one worker finishing a
  long test alone at the end of the run."""
  del config
  items.sort(key=lambda item: item.get_closest_marker('long') is None)


@pytest.fixture(scope='session')
def fashion_mnist_data_dir(tmp_path_factory):
  """A tfds data_dir with fashion_mnist prepared offline from Debian's files, once per run:
  the first xdist worker prepares it under the run's shared temporary folder, the others
  wait for it (tests only read it)."""
  import filelock

  from vit_jax.datasets import fashion_mnist_local

  shared = tmp_path_factory.getbasetemp()
  if os.environ.get('PYTEST_XDIST_WORKER'):
    shared = shared.parent  # the run's folder, above each worker's own
  data_dir, ready = shared / 'fashion_mnist_tfds', shared / 'fashion_mnist_tfds.ready'
  with filelock.FileLock(str(shared / 'fashion_mnist_tfds.lock')):
    if not ready.exists():
      fashion_mnist_local.prepare_fashion_mnist(FASHION_MNIST_DIR, str(data_dir))
      ready.touch()
  return str(data_dir)


@pytest.fixture(scope='session')
def jpeg_data_dir(tmp_path_factory):
  """A tfds data_dir with generated_jpegs/tiny (48 train, 20 test JPEGs) in array_record."""
  from vit_jax.datasets import generated_jpegs

  data_dir = str(tmp_path_factory.mktemp('jpegs'))
  generated_jpegs.prepare('tiny', data_dir)
  return data_dir
