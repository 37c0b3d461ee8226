"""MAE pre-training + fine-tuning against training from scratch for the same wall time.

  python bench/mae_vs_scratch.py --model=pit   # 784 pixel tokens
  python bench/mae_vs_scratch.py --model=vit2  # 196 2x2-patch tokens

Runs `python -m vit_jax.main` three times on Fashion-MNIST at 28x28 (configs/mae.py): MAE
pre-training, fine-tuning its encoder.npz, then the fine-tuning recipe from scratch for as
many steps as fit in the first two runs' wall time (scaled by the fine-tuning run's own
seconds per step, start-up and eval included). Prints each run's wall time, steps, final
train loss and the test metric, and the pre-training loss curve.
"""

import json
import os
import shutil
import subprocess
import sys
import time

from absl import app
from absl import flags

flags.DEFINE_enum('model', 'pit', ['pit', 'vit2'], 'PiT (1x1 tokens) or its ViT/2 baseline.')
flags.DEFINE_string('workdir', '/tmp/vit_jax_mae_bench', 'Parent folder of the three runs.')
flags.DEFINE_integer('pretrain_steps', 0, 'MAE steps (0: the recipe default).')
flags.DEFINE_integer('finetune_steps', 0, 'Fine-tuning steps (0: the recipe default).')
FLAGS = flags.FLAGS


def _run(recipe, workdir, *overrides):
  """Runs one job (fresh workdir); returns (wall seconds, final result, metrics records)."""
  shutil.rmtree(workdir, ignore_errors=True)
  command = [
      sys.executable,
      '-m',
      'vit_jax.main',
      f'--config=configs/mae.py:{recipe}',
      f'--workdir={workdir}',
      *overrides,
  ]
  start = time.time()
  out = subprocess.run(command, check=True, capture_output=True, text=True).stdout
  wall = time.time() - start
  result = json.loads(out.strip().splitlines()[-1])
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    records = [json.loads(line) for line in f]
  return wall, result, records


def _steps(value):
  return (
      [f'--config.total_steps={value}', f'--config.warmup_steps={max(1, value // 10)}']
      if value
      else []
  )


def main(argv):
  del argv
  base = 'fashion_mnist' if FLAGS.model == 'pit' else 'fashion_mnist_vit2'
  root = os.path.join(FLAGS.workdir, FLAGS.model)
  print(f'cpus {os.cpu_count()}, load average {os.getloadavg()}')
  pre = _run(base, os.path.join(root, 'mae'), *_steps(FLAGS.pretrain_steps))
  encoder = pre[1]['encoder_checkpoint']
  tune = _run(
      f'{base}_finetune',
      os.path.join(root, 'finetune'),
      f'--config.pretrained_path={encoder}',
      *_steps(FLAGS.finetune_steps),
  )
  scratch_steps = int(tune[1]['step'] * (pre[0] + tune[0]) / tune[0])
  scratch = _run(f'{base}_finetune', os.path.join(root, 'scratch'), *_steps(scratch_steps))
  print(f'\n{FLAGS.model}: MAE pre-training loss (masked-token MSE on [-1, 1] pixels) by step')
  print(
      '  ' + ', '.join(f'{r["step"]}: {r["train_loss"]:.4f}' for r in pre[2] if 'train_loss' in r)
  )
  print(f'  test reconstruction loss (fixed masks): {pre[1]["eval_reconstruction_loss"]:.4f}')
  print(f'\n| {FLAGS.model} run | steps | wall s | final train loss | test |')
  print('|---|---|---|---|---|')
  print(
      f'| MAE pre-training | {pre[1]["step"]} | {pre[0]:.0f} | {pre[1]["train_loss"]:.4f} | '
      f'recon. {pre[1]["eval_reconstruction_loss"]:.4f} |'
  )
  for name, run in (('fine-tuning the MAE encoder', tune), ('from scratch', scratch)):
    print(
        f'| {name} | {run[1]["step"]} | {run[0]:.0f} | {run[1]["train_loss"]:.4f} | '
        f'{run[1]["eval_accuracy"]:.2%} |'
    )
  print(
      f'| MAE + fine-tuning total | | {pre[0] + tune[0]:.0f} | | {tune[1]["eval_accuracy"]:.2%} |'
  )


if __name__ == '__main__':
  app.run(main)
