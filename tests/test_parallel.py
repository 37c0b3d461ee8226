"""parallel.initialize_distributed: explicit flags, env vars, and multi-host TPU detection."""
import jax
import pytest

from vit_jax import parallel


@pytest.mark.parametrize('environ,expected', [
    ({}, False),
    ({'TPU_WORKER_HOSTNAMES': 'localhost'}, False),  # one host: nothing to coordinate
    ({'TPU_WORKER_HOSTNAMES': 't1v-n-0,t1v-n-1'}, True),
    ({'TPU_PROCESS_ADDRESSES': '10.0.0.2:8476,10.0.0.3:8476'}, True),
    ({'MEGASCALE_COORDINATOR_ADDRESS': '10.0.0.2:8080'}, True),
])
def test_multi_host_tpu_environment(environ, expected):
  assert parallel.multi_host_tpu_environment(environ) is expected


def _record_initialize(monkeypatch):
  calls = []
  monkeypatch.setattr(jax.distributed, 'initialize', lambda *a, **k: calls.append((a, k)))
  monkeypatch.setattr(jax.distributed, 'is_initialized', lambda: False)
  for key in ('JAX_COORDINATOR_ADDRESS', 'TPU_WORKER_HOSTNAMES', 'TPU_PROCESS_ADDRESSES',
              'MEGASCALE_COORDINATOR_ADDRESS'):
    monkeypatch.delenv(key, raising=False)
  return calls


def test_tpu_slice_initializes_without_arguments(monkeypatch):
  calls = _record_initialize(monkeypatch)
  monkeypatch.setenv('TPU_WORKER_HOSTNAMES', 'h0,h1,h2,h3')
  parallel.initialize_distributed()
  assert calls == [((), {})]


def test_explicit_flags_win_over_the_tpu_environment(monkeypatch):
  calls = _record_initialize(monkeypatch)
  monkeypatch.setenv('TPU_WORKER_HOSTNAMES', 'h0,h1')
  monkeypatch.setenv('JAX_PLATFORMS', 'tpu')  # no gloo switch for this fake run
  parallel.initialize_distributed('10.1.1.1:1234', 2, 1)
  assert calls == [(('10.1.1.1:1234', 2, 1), {})]


def test_single_host_without_flags_does_not_initialize(monkeypatch):
  calls = _record_initialize(monkeypatch)
  parallel.initialize_distributed()
  assert not calls
