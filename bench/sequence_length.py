"""The PiT paper's two sequence-length experiments at CPU scale, on Fashion-MNIST.

  python bench/sequence_length.py --out=/tmp/seqlen --smoke   # timings and the estimate
  python bench/sequence_length.py --out=/tmp/seqlen           # the sweep (resumable)
  python bench/sequence_length.py --out=/tmp/seqlen --report_only

(a) Fixed 28x28 images, patch 7, 4, 2, 1: 16, 49, 196, 784 tokens.
(b) Fixed 196 tokens: 28x28 with patch 2, 14x14 with patch 1 (and, with --with_56, 56x56
    upsampled with patch 4). The 28x28 patch-2 point is shared with (a).

Every point is the same small transformer (configs/pit.py:fashion_mnist: width 32, depth 4,
one head, MLP 64, sincos2d, global average pooling) and recipe, trained for --epochs epochs
of the 60,000 training images, each seed in its own workdir OUT/i<size>_p<patch>_s<seed>
(bench/sweep.py: killed points resume, finished ones are skipped). Writes
OUT/sequence_length.md and two figures, OUT/sequence_length_{a,b}.png, from the workdirs.
"""

import os

from absl import app
from absl import flags
import sweep

FLAGS = flags.FLAGS


def define_flags():
  """The command line (defined here so that tests can import the planning)."""
  flags.DEFINE_string('out', '/tmp/vit_jax_sequence_length', 'Folder of every point.')
  flags.DEFINE_integer('epochs', 5, 'Epochs of the 60,000 training images, the same per point.')
  flags.DEFINE_integer('seeds', 2, 'Seeds per point (the decisive pairs need >= 2 for a std).')
  flags.DEFINE_integer('batch', 64, 'Train batch (the fashion_mnist preset: 64).')
  flags.DEFINE_bool('with_56', False, '(b) also at 56x56 (upsampled) with 4x4 patches.')
  flags.DEFINE_bool('smoke', False, 'Only time each point for --smoke_steps steps and estimate.')
  flags.DEFINE_integer('smoke_steps', 20, 'Steps of each smoke run.')
  flags.DEFINE_bool('report_only', False, 'Only write the table and figures from the workdirs.')


EXPERIMENT_A = ((28, 7), (28, 4), (28, 2), (28, 1))
EXPERIMENT_B = ((28, 2), (14, 1))


def experiments(with_56):
  """{'a': [(image size, patch), ...], 'b': [...]} in plotting order."""
  b = EXPERIMENT_B + (((56, 4),) if with_56 else ())
  return {'a': EXPERIMENT_A, 'b': tuple(sorted(b))}


def name(size, patch, seed):
  return f'i{size}_p{patch}_s{seed}'


def steps(epochs, batch):
  return epochs * (sweep.FASHION_MNIST_TRAIN // batch)


def plan(epochs, seeds, batch, with_56):
  """Every run of the sweep, each (size, patch, seed) once, the costly ones last."""
  configs = sorted({c for cs in experiments(with_56).values() for c in cs}, key=_tokens)
  total = steps(epochs, batch)
  return [
      sweep.Point(
          name(size, patch, seed),
          'pit.py:fashion_mnist',
          total,
          {
              'seed': seed,
              'batch': batch,
              'pp.crop': size,
              'model.patches.size': f'({patch},{patch})',
              **sweep.schedule(total),
          },
      )
      for seed in range(seeds)
      for size, patch in configs
  ]


def _tokens(config):
  size, patch = config
  return (size // patch) ** 2, size


def report(out, epochs, seeds, batch, with_56):
  """Writes OUT/sequence_length.md and the two figures; returns the markdown."""
  total = steps(epochs, batch)
  lines = [
      '# Sequence length on Fashion-MNIST (the PiT paper, at CPU scale)',
      '',
      'Model: configs/pit.py:fashion_mnist (width 32, depth 4, 1 head, MLP 64, sincos2d, '
      f'GAP), batch {batch}, {epochs} epochs ({total} steps) per point. Wall time: training '
      'of one run, mean over seeds (start-up included, final evaluation excluded). (a) fixes '
      'the image, (b) the sequence length; the 28x28 patch-2 runs are in both.',
      '',
      '| experiment | tokens | patch | image size | epochs | steps | wall time | '
      'test accuracy |',
      '|---|---|---|---|---|---|---|---|',
  ]
  curves = {}
  for key, configs in experiments(with_56).items():
    for size, patch in configs:
      accs, walls, done = sweep.seeds_summary(
          out, [name(size, patch, s) for s in range(seeds)], total
      )
      wall = sweep.hours(sum(walls) / len(walls)) if walls else '-'
      lines.append(
          f'| ({key}) | {(size // patch) ** 2} | {patch} | {size}x{size} | {epochs} | '
          f'{done[0] if done else "-"} | {wall} | {sweep.mean_std(accs)} |'
      )
      curves.setdefault(key, []).append((size, patch, accs))
  lines.append('')
  text = '\n'.join(lines)
  os.makedirs(out, exist_ok=True)
  with open(os.path.join(out, 'sequence_length.md'), 'w') as f:
    f.write(text)
  _figure(curves['a'], 1, 'patch size (28x28 images)', 'Fixed image size', out, 'a')
  _figure(curves['b'], 0, 'image size (196 tokens)', 'Fixed sequence length', out, 'b')
  return text


def _figure(curve, axis, xlabel, title, out, key):
  """Accuracy (mean, error bar: std over seeds) against the patch or the image size."""
  plt = sweep.pyplot()
  fig, ax = plt.subplots(figsize=(4.5, 3.5))
  xs, means, stds = [], [], []
  for size, patch, accs in curve:
    if accs:
      mean, std = sweep.mean_and_std(accs)
      xs.append((size, patch)[axis])
      means.append(100 * mean)
      stds.append(100 * std)
  ax.errorbar(xs, means, yerr=stds, marker='o', capsize=3)
  ax.set_xscale('log')
  ax.minorticks_off()
  ax.set_xticks(
      [(size, patch)[axis] for size, patch, _ in curve],
      [f'{(size, patch)[axis]}\n({(size // patch) ** 2} tok)' for size, patch, _ in curve],
  )
  if axis == 1:
    ax.invert_xaxis()  # the paper's direction: smaller patches (more tokens) to the right
  ax.set_xlabel(xlabel)
  ax.set_ylabel('test accuracy (%)')
  ax.set_title(title + ('' if xs else ' (pending)'))
  ax.grid(alpha=0.3)
  fig.tight_layout()
  fig.savefig(os.path.join(out, f'sequence_length_{key}.png'), dpi=120)
  plt.close(fig)


def main(argv):
  del argv
  args = (FLAGS.epochs, FLAGS.seeds, FLAGS.batch, FLAGS.with_56)
  points = plan(*args)
  if FLAGS.smoke:
    smoke_out = os.path.join(FLAGS.out, 'smoke')
    sweep.run(sweep.smoke_points(points, FLAGS.smoke_steps), smoke_out)
    sweep.estimate(points, smoke_out, FLAGS.batch)
    return
  if not FLAGS.report_only:
    sweep.run(points, FLAGS.out)
  print(report(FLAGS.out, *args))


if __name__ == '__main__':
  define_flags()
  app.run(main)
