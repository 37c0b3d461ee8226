"""Starting a multi-process run: the process flags checked, and a visible, bounded wait.

`resolve` checks --coordinator_address / --num_processes / --process_id (or the
JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID variables) before anything
starts: a missing count, an index out of range or an address without a port is one line.

`initialize` runs jax.distributed.initialize under a watchdog thread: while the coordinator
(process 0) or the other processes are not there yet it says so (after 2 s, then every 10 s),
and after `timeout` seconds it prints one line and ends the process with status 2. The
watchdog, not JAX's own timeout, decides: a JAX client whose peers never come up may abort
the process (no exception to catch), so JAX's timeout is set beyond it.
"""

import os
import sys
import threading
import time

from absl import logging

from vit_jax import errors

FIRST_REPORT_SECONDS = 2
WAIT_REPORT_SECONDS = 10


def _int(value, flag, env):
  try:
    return int(value)
  except (TypeError, ValueError):
    raise errors.UserInputError(
        f'--{flag}={value!r} (or ${env}) is not an integer; pass e.g. --{flag}=0'
    ) from None


def resolve(coordinator_address=None, num_processes=None, process_id=None, environ=None):
  """(address, num_processes, process_id) of a multi-process run, or None for one process.

  Flags win over the JAX_* environment variables.
  """
  environ = os.environ if environ is None else environ
  address = coordinator_address or environ.get('JAX_COORDINATOR_ADDRESS')
  count = num_processes if num_processes is not None else environ.get('JAX_NUM_PROCESSES')
  index = process_id if process_id is not None else environ.get('JAX_PROCESS_ID')
  if not address:
    if count is not None or index is not None:
      raise errors.UserInputError(
          '--num_processes and --process_id need --coordinator_address=HOST:PORT (process 0 '
          'listens there; the same address for every process)'
      )
    return None
  host, _, port = address.rpartition(':')
  if not host or not port.isdigit():
    raise errors.UserInputError(
        f'--coordinator_address={address!r} is not HOST:PORT; pass e.g. '
        '--coordinator_address=10.0.0.2:1234 (process 0 listens there)'
    )
  if count is None or index is None:
    missing = '--num_processes=N' if count is None else '--process_id=I'
    raise errors.UserInputError(
        f'--coordinator_address={address} needs {missing} too: every process gets the same '
        '--num_processes and its own --process_id in 0..N-1'
    )
  count = _int(count, 'num_processes', 'JAX_NUM_PROCESSES')
  index = _int(index, 'process_id', 'JAX_PROCESS_ID')
  if count < 1:
    raise errors.UserInputError(f'--num_processes={count} must be >= 1')
  if not 0 <= index < count:
    raise errors.UserInputError(
        f'--process_id={index} is out of range for --num_processes={count}; give each process '
        f'its own id in 0..{count - 1}'
    )
  return address, count, index


def _waiting_for(address, count, index):
  if index == 0:
    return f'the other {count - 1} processes to connect to this coordinator at {address}'
  return f'the coordinator (process 0) at {address} and the other processes'


def initialize(address, count, index, timeout):
  """jax.distributed.initialize, reported while it waits; exit 2 after `timeout` seconds."""
  if timeout <= 0:
    raise errors.UserInputError(f'--coordinator_timeout={timeout} must be > 0 (seconds)')
  import jax

  if os.environ.get('JAX_PLATFORMS', 'cpu').startswith('cpu'):
    jax.config.update('jax_cpu_collectives_implementation', 'gloo')
  done = threading.Event()
  start = time.time()
  what = _waiting_for(address, count, index)

  def watch():
    every = FIRST_REPORT_SECONDS
    while True:
      left = timeout - (time.time() - start)
      if done.wait(min(every, max(left, 0))):
        return
      waited = time.time() - start
      if waited >= timeout:
        sys.stdout.flush()
        print(
            errors.one_line(
                f'process {index} of {count} gave up after --coordinator_timeout={timeout} s '
                f'waiting for {what}. Start all {count} processes with the same '
                '--coordinator_address and --num_processes (process 0 on the host of that '
                'address, reachable from the others), or raise --coordinator_timeout.'
            ),
            file=sys.stderr,
            flush=True,
        )
        os._exit(2)
      print(
          f'Process {index} of {count}: waiting for {what} ({waited:.0f} of '
          f'--coordinator_timeout={timeout} s)',
          file=sys.stderr,
          flush=True,
      )
      every = WAIT_REPORT_SECONDS

  watchdog = threading.Thread(target=watch, name='vit_jax coordinator wait', daemon=True)
  watchdog.start()
  try:
    jax.distributed.initialize(
        address, count, index, initialization_timeout=int(timeout) + WAIT_REPORT_SECONDS * 3
    )
  except Exception as e:
    raise errors.UserInputError(
        f'process {index} of {count} could not join the run at {address}: '
        f'{type(e).__name__}: {str(e)[:300]}'
    ) from e
  finally:
    done.set()
  logging.info(
      'Process %d of %d, %d local / %d global devices',
      jax.process_index(),
      jax.process_count(),
      jax.local_device_count(),
      jax.device_count(),
  )
