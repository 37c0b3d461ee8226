"""Meshes, sharding rules and multi-process setup: the one place where sharding is declared.

Mesh axes: `data` (batch), `fsdp` (batch, and parameters sharded along their largest
dimension), `seq` (the token axis of activations, for sequence-sharded attention).
"""

import os
import re

from absl import logging
import jax
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
import numpy as np

from vit_jax import errors
from vit_jax.runtime import processes

AXES = ('data', 'fsdp', 'seq')
BATCH_AXES = ('data', 'fsdp')
# Ordered (regex over '/'-joined parameter or optimizer-state paths, rule); first match wins.
# 'fsdp': shard the largest dimension divisible by the fsdp axis; 'fsdp_stacked': the same
# over all but the leading layer axis of a scanned encoder's stacked blocks (sharding that
# axis would make every scan iteration gather its layer from other devices); 'replicate':
# no sharding.
PARAM_RULES = (
    (r'.*(LayerNorm|encoder_norm|gn_|bias|scale|cls).*', 'replicate'),
    (r'(.*/)?Transformer/encoderblock/.*', 'fsdp_stacked'),
    (r'.*', 'fsdp'),
)


def multi_host_tpu_environment(environ=None):
  """Whether the environment describes a multi-host Cloud TPU slice (or several slices).

  TPU VMs of a multi-host slice (GKE, queued resources) list their workers in
  TPU_WORKER_HOSTNAMES or TPU_PROCESS_ADDRESSES; multislice jobs set
  MEGASCALE_COORDINATOR_ADDRESS. jax.distributed.initialize() reads the rest itself.
  """
  environ = os.environ if environ is None else environ
  for key in ('TPU_PROCESS_ADDRESSES', 'TPU_WORKER_HOSTNAMES'):
    hosts = [h for h in environ.get(key, '').split(',') if h.strip()]
    if len(hosts) > 1:
      return True
  return bool(environ.get('MEGASCALE_COORDINATOR_ADDRESS'))


def initialize_distributed(
    coordinator_address=None, num_processes=None, process_id=None, timeout=300
):
  """jax.distributed.initialize from arguments, JAX_COORDINATOR_ADDRESS/... env vars, or a
  multi-host TPU environment (then without arguments); explicit values win. Bad process
  flags are one-line errors; the wait for the others is reported and ends after `timeout`
  seconds (vit_jax/runtime/processes.py)."""
  if jax.distributed.is_initialized():
    return
  resolved = processes.resolve(coordinator_address, num_processes, process_id)
  if resolved is None:
    if multi_host_tpu_environment():
      logging.info('Multi-host TPU environment: jax.distributed.initialize()')
      jax.distributed.initialize()
    return
  processes.initialize(*resolved, timeout)


def create_mesh(mesh_config, devices=None):
  """Mesh over all devices (or `devices`, e.g. a TPU topology's compile-only ones) from
  config.mesh = {data, fsdp, seq}; one size may be -1."""
  sizes = [int(mesh_config.get(axis, 1)) for axis in AXES]
  unknown = [i for i, s in enumerate(sizes) if s == -1]
  known = int(np.prod([s for s in sizes if s != -1]))
  n = jax.device_count() if devices is None else len(devices)
  if len(unknown) > 1 or any(s == 0 or s < -1 for s in sizes):
    raise errors.UserInputError(
        f'config.mesh={dict(zip(AXES, sizes))}: at most one axis may be -1 and '
        'the others must be positive'
    )
  if unknown and n % known == 0:
    sizes[unknown[0]] = n // known
  if int(np.prod(sizes)) != n:
    raise errors.UserInputError(
        f'config.mesh={dict(zip(AXES, sizes))} needs {int(np.prod(sizes))} '
        f'devices but there are {n}; make the product of the axis sizes equal '
        f'{n} (or set one axis to -1).'
    )
  return jax.make_mesh(
      tuple(sizes), AXES, axis_types=(jax.sharding.AxisType.Auto,) * len(AXES), devices=devices
  )


def data_parallel_size(mesh):
  return mesh.shape['data'] * mesh.shape['fsdp']


def validate_batch(batch_size, mesh, field='config.batch'):
  dp = data_parallel_size(mesh)
  if batch_size % dp or batch_size % jax.process_count():
    raise errors.UserInputError(
        f'{field}={batch_size} is not divisible by the {dp} data-parallel devices '
        f'(mesh data x fsdp) and {jax.process_count()} processes; use a multiple '
        'of both.'
    )


def _spec_for(path, shape, fsdp):
  rule = next((r for pattern, r in PARAM_RULES if re.fullmatch(pattern, path)), PARAM_RULES[-1][1])
  if rule == 'replicate' or fsdp == 1 or not shape:
    return P()
  first = 1 if rule == 'fsdp_stacked' else 0
  dims = sorted(range(first, len(shape)), key=lambda d: -shape[d])
  for d in dims:
    if shape[d] % fsdp == 0 and shape[d] >= fsdp:
      spec = [None] * len(shape)
      spec[d] = 'fsdp'
      return P(*spec)
  return P()


def param_shardings(abstract_tree, mesh):
  """NamedSharding for every leaf of a parameter or optimizer-state tree, by PARAM_RULES."""
  fsdp = mesh.shape['fsdp']

  def one(path, leaf):
    name = jax.tree_util.keystr(path, simple=True, separator='/')
    return NamedSharding(mesh, _spec_for(name, tuple(getattr(leaf, 'shape', ())), fsdp))

  return jax.tree_util.tree_map_with_path(one, abstract_tree)


def batch_sharding(mesh):
  return NamedSharding(mesh, P(BATCH_AXES))


def global_batch(local_batch, mesh):
  """Per-process numpy batch -> dict of global jax.Arrays sharded over the batch axes."""
  sharding = batch_sharding(mesh)
  return {
      k: jax.make_array_from_process_local_data(sharding, np.asarray(v))
      for k, v in local_batch.items()
  }
