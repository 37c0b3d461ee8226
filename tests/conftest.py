"""Test setup: 8 simulated CPU devices, full-precision matmuls, offline tfds."""
import os

# Must happen before jax is imported anywhere in the test process.
os.environ.setdefault('XLA_FLAGS', '--xla_force_host_platform_device_count=8')
os.environ.setdefault('JAX_PLATFORMS', 'cpu')
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
os.environ.setdefault('TFDS_DISABLE_GCS', '1')

import jax  # pylint: disable=g-import-not-at-top

jax.config.update('jax_default_matmul_precision', 'highest')
