"""Entry point, as the original: python -m vit_jax.main --workdir=DIR --config=FILE:ARG.

  python -m vit_jax.main --workdir=/tmp/vit --config=configs/vit.py:b16,cifar10 \
      --config.base_lr=0.01

Multi-process: --coordinator_address=host:port --num_processes=N --process_id=i (or the
JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID environment variables). On a
multi-host Cloud TPU slice without them, jax.distributed.initialize() finds its peers itself.

Exit status: 0 when the run finished; 2 for a mistake in the flags, the config, the data
or the workdir (one line `error: ...`, before anything is written); 128 + N when signal N
(SIGTERM: 143, SIGINT: 130) reached any process and every process stopped after saving a
checkpoint at the same step (rerun the same command to resume); 1 on another error. A run
that fails after it started keeps its last state saved and ends its message with that step.
One workdir takes one run at a time (a lock; --force_unlock takes over one left by a run on
another host that is gone).

On start the process re-executes itself with tcmalloc preloaded when it is installed
(VIT_JAX_TCMALLOC=0 disables this) and creates `config.cpu_devices` CPU devices; see
vit_jax/runtime/host_setup.py.
"""

import json
import sys

from absl import app
from absl import flags
from ml_collections import config_flags

from vit_jax import cli
from vit_jax.configs import overrides
from vit_jax.runtime import gcs_credentials
from vit_jax.runtime import host_setup

config_flags.DEFINE_config_file('config', None, 'Training config file:arg.', lock_config=True)
flags.DEFINE_string('workdir', None, 'Where checkpoints and metrics go; resumes from it.')
flags.DEFINE_string('coordinator_address', None, 'jax.distributed coordinator host:port.')
flags.DEFINE_integer('num_processes', None, 'Number of processes (multi-process runs).')
flags.DEFINE_integer('process_id', None, 'This process index (multi-process runs).')
flags.DEFINE_integer(
    'coordinator_timeout',
    300,
    'Seconds to wait for the coordinator and '
    'the other processes at start (multi-process runs); then exit 2.',
)
flags.DEFINE_bool(
    'force_unlock',
    False,
    'Take over the workdir lock of a run that is gone '
    '(one that is not recognised as stale by itself: another host, recently).',
)
flags.mark_flags_as_required(['config', 'workdir'])
FLAGS = flags.FLAGS


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  from vit_jax.runtime import processes

  processes.resolve(FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id)
  if FLAGS.workdir.startswith('gs://'):
    gcs_credentials.check(f'--workdir={FLAGS.workdir}')
  overrides.check(FLAGS.config, config_flags.get_override_values(FLAGS['config']))
  host_setup.reexec_with_tcmalloc('vit_jax.main')
  # Imported here so that the flags above parse before TensorFlow and JAX start.
  host_setup.set_cpu_devices(FLAGS.config.cpu_devices)  # before JAX's backends start
  from vit_jax import train
  from vit_jax.runtime import partitioning
  from vit_jax.runtime import preemption

  partitioning.initialize_distributed(
      FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id, FLAGS.coordinator_timeout
  )
  import tensorflow as tf

  tf.config.set_visible_devices([], 'GPU')  # tf.data only; the accelerators are JAX's
  result = train.train_and_evaluate(FLAGS.config, FLAGS.workdir, FLAGS.force_unlock)
  if result.get('stopped_by_signal'):
    status = preemption.exit_status(result['stopped_by_signal'])
    print(json.dumps(result))
    print(
        f'Stopped early at step {result["step"]} by a signal, checkpoint saved; exit status '
        f'{status}. Run the same command to resume.'
    )
    sys.exit(status)
  if 'eval_accuracy' in result:
    how = ''
    if 'eval_accuracy_single_view' in result:  # config.eval_flip
      how = (
          f' (logits of each image and its mirror averaged; single view '
          f'{result["eval_accuracy_single_view"]:.4f})'
      )
    print(
        f'Final test accuracy: {result["eval_accuracy"]:.4f}{how} over '
        f'{result["eval_examples"]} test images (step {result["step"]})'
    )
  if 'eval_reconstruction_loss' in result:
    print(
        f'Final test reconstruction loss (masked tokens): '
        f'{result["eval_reconstruction_loss"]:.4f} over {result["eval_examples"]} test images '
        f'(step {result["step"]}); encoder for fine-tuning: {result["encoder_checkpoint"]}'
    )
  print(json.dumps(result))


if __name__ == '__main__':
  cli.run(main)
