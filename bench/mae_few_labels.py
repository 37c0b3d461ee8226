"""MAE pre-training where it is known to help, few labels: Fashion-MNIST at 28x28 on a CPU.

  python bench/mae_few_labels.py --out=/tmp/mae_few --smoke   # timings and the estimate
  python bench/mae_few_labels.py --out=/tmp/mae_few           # the sweep (resumable)
  python bench/mae_few_labels.py --out=/tmp/mae_few --report_only

Per model (ViT/2 first: 196 tokens, then PiT: 784 pixel tokens; configs/mae.py):
  1. MAE pre-training on all 60,000 training images, no labels, --pretrain_epochs epochs;
  2. fine-tuning its encoder on a fixed, class-balanced share of the labels
     (config.pp.train_labelled_fraction: --fractions, 1 % and 10 % by default);
  3. the same fine-tuning from scratch on the same labelled images.
Fine-tuning runs --finetune_epochs passes over the labelled subset (at least
--min_finetune_steps steps), one workdir per (model, fraction, arm, seed) under --out
(bench/sweep.py: killed points resume, finished ones are skipped). Writes
OUT/mae_few_labels.md and OUT/mae_few_labels.png (accuracy vs label fraction).
"""

import os

from absl import app
from absl import flags
import sweep

FLAGS = flags.FLAGS


def define_flags():
  """The command line (defined here so that tests can import the planning)."""
  flags.DEFINE_string('out', '/tmp/vit_jax_mae_few_labels', 'Folder of every point.')
  flags.DEFINE_list('models', ['vit2', 'pit'], 'vit2 (2x2 patches) and/or pit (pixels), in order.')
  flags.DEFINE_list('fractions', ['0.01', '0.1'], 'Shares of the labels to fine-tune on.')
  flags.DEFINE_integer('pretrain_epochs', 10, 'MAE epochs over the 60,000 unlabelled images.')
  flags.DEFINE_integer('finetune_epochs', 30, 'Fine-tuning passes over the labelled subset.')
  flags.DEFINE_integer('min_finetune_steps', 500, 'Fewest fine-tuning steps (1 % is 9 a pass).')
  flags.DEFINE_integer('seeds', 2, 'Fine-tuning seeds per (model, fraction, arm).')
  flags.DEFINE_bool('smoke', False, 'Only time each seed-0 point for --smoke_steps and estimate.')
  flags.DEFINE_integer('smoke_steps', 20, 'Steps of each smoke run.')
  flags.DEFINE_bool('report_only', False, 'Only write the table and figure from the workdirs.')


BATCH = 64  # configs/mae.py's Fashion-MNIST recipes
CLASSES = 10
RECIPES = {'vit2': 'fashion_mnist_vit2', 'pit': 'fashion_mnist'}
LABELS = {'vit2': 'ViT/2 (196 tokens)', 'pit': 'PiT (784 tokens)'}
ARMS = ('mae', 'scratch')


def labelled(fraction):
  """Labelled examples kept (vit_jax/datasets/labelled_subset.py: the same per class)."""
  return CLASSES * int(round(fraction * sweep.FASHION_MNIST_TRAIN / CLASSES))


def finetune_steps(fraction, epochs, min_steps):
  return max(min_steps, epochs * labelled(fraction) // BATCH)


def pretrain_steps(epochs):
  return epochs * (sweep.FASHION_MNIST_TRAIN // BATCH)


def finetune_name(model, fraction, arm, seed):
  return f'{model}_f{fraction:g}_{arm}_s{seed}'


def plan(out, models, fractions, pretrain_epochs, finetune_epochs, min_steps, seeds):
  """Every run: each model's pre-training, then its fine-tuning points."""
  points = []
  for model in models:
    pre = f'{model}_mae'
    steps = pretrain_steps(pretrain_epochs)
    points.append(sweep.Point(pre, f'mae.py:{RECIPES[model]}', steps, sweep.schedule(steps)))
    for seed in range(seeds):
      for fraction in fractions:
        steps = finetune_steps(fraction, finetune_epochs, min_steps)
        for arm in ARMS:
          overrides = {'seed': seed, 'pp.train_labelled_fraction': fraction}
          overrides.update(sweep.schedule(steps))
          if arm == 'mae':
            overrides['pretrained_path'] = os.path.join(out, pre, 'encoder.npz')
          points.append(
              sweep.Point(
                  finetune_name(model, fraction, arm, seed),
                  f'mae.py:{RECIPES[model]}_finetune',
                  steps,
                  overrides,
                  needs=pre if arm == 'mae' else '',
              )
          )
  return points


def report(out, models, fractions, pretrain_epochs, finetune_epochs, min_steps, seeds):
  """Writes OUT/mae_few_labels.md and OUT/mae_few_labels.png; returns the markdown."""
  lines = [
      '# MAE pre-training with few labels on Fashion-MNIST (28x28)',
      '',
      f'MAE: {pretrain_epochs} epochs on all 60,000 training images without labels. '
      f'Fine-tuning: {finetune_epochs} passes over the labelled subset (at least {min_steps} '
      f'steps), batch {BATCH}, the same recipe for both arms (configs/mae.py). Wall time: '
      'training of one run, mean over seeds (start-up included, final evaluation excluded).',
      '',
      '| model | labels | labelled images | arm | steps | wall time | test accuracy |',
      '|---|---|---|---|---|---|---|',
  ]
  curves = {}
  for model in models:
    pre = sweep.summary(os.path.join(out, f'{model}_mae'), pretrain_steps(pretrain_epochs))
    recon = f'reconstruction {pre["reconstruction"]:.4f}' if pre else 'pending'
    wall = sweep.hours(pre['wall']) if pre and pre['wall'] else '-'
    steps = pre['step'] if pre else '-'
    lines.append(
        f'| {LABELS[model]} | none | 60,000 | MAE pre-training | {steps} | {wall} | ' f'{recon} |'
    )
    for fraction in fractions:
      steps = finetune_steps(fraction, finetune_epochs, min_steps)
      for arm in ARMS:
        names = [finetune_name(model, fraction, arm, s) for s in range(seeds)]
        accs, walls, done = sweep.seeds_summary(out, names, steps)
        wall = sweep.hours(sum(walls) / len(walls)) if walls else '-'
        lines.append(
            f'| {LABELS[model]} | {fraction:.0%} | {labelled(fraction):,} | '
            f'{"MAE + fine-tuning" if arm == "mae" else "from scratch"} | '
            f'{done[0] if done else "-"} | {wall} | {sweep.mean_std(accs)} |'
        )
        curves.setdefault((model, arm), []).append((fraction, accs))
  lines.append('')
  text = '\n'.join(lines)
  os.makedirs(out, exist_ok=True)
  with open(os.path.join(out, 'mae_few_labels.md'), 'w') as f:
    f.write(text)
  _figure(curves, out)
  return text


def _figure(curves, out):
  """Test accuracy against the label fraction (log scale): both arms, both models."""
  plt = sweep.pyplot()
  fig, ax = plt.subplots(figsize=(5, 3.6))
  for (model, arm), curve in curves.items():
    xs, means, stds = [], [], []
    for fraction, accs in curve:
      if accs:
        mean, std = sweep.mean_and_std(accs)
        xs.append(100 * fraction)
        means.append(100 * mean)
        stds.append(100 * std)
    ax.errorbar(
        xs,
        means,
        yerr=stds,
        marker='o' if arm == 'mae' else 's',
        linestyle='-' if arm == 'mae' else '--',
        capsize=3,
        label=f'{LABELS[model]}, {"MAE" if arm == "mae" else "scratch"}',
    )
  ax.set_xscale('log')
  ax.minorticks_off()
  fractions = sorted({100 * f for curve in curves.values() for f, _ in curve})
  ax.set_xticks(fractions, [f'{f:g} %' for f in fractions])
  ax.set_xlabel('labelled training images (%)')
  ax.set_ylabel('test accuracy (%)')
  ax.set_title('MAE vs from scratch, few labels')
  ax.grid(alpha=0.3)
  ax.legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(os.path.join(out, 'mae_few_labels.png'), dpi=120)
  plt.close(fig)


def main(argv):
  del argv
  fractions = [float(f) for f in FLAGS.fractions]
  unknown = sorted(set(FLAGS.models) - set(RECIPES))
  if unknown:
    raise app.UsageError(f'--models: unknown {unknown}; choose from {sorted(RECIPES)}')
  args = (
      FLAGS.models,
      fractions,
      FLAGS.pretrain_epochs,
      FLAGS.finetune_epochs,
      FLAGS.min_finetune_steps,
      FLAGS.seeds,
  )
  points = plan(FLAGS.out, *args)
  if FLAGS.smoke:
    smoke_out = os.path.join(FLAGS.out, 'smoke')
    sweep.run(sweep.smoke_points(points, FLAGS.smoke_steps), smoke_out)
    sweep.estimate(points, smoke_out, BATCH)
    return
  if not FLAGS.report_only:
    sweep.run(points, FLAGS.out)
  print(report(FLAGS.out, *args))


if __name__ == '__main__':
  define_flags()
  app.run(main)
