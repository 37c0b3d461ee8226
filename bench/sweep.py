"""Resumable sweeps of `python -m vit_jax.main` runs, shared by the paper-trend benches.

A point is one run with its own workdir under the sweep's output folder. Running a sweep
starts each unfinished point with the same command, so a point that was killed resumes from
its last checkpoint and a finished one is skipped. Everything a report needs is read back
from the workdirs' metrics.jsonl: the final step, the wall time (`core_hours` over the
device count, carried across restarts) and the final test metric.
"""

import dataclasses
import json
import math
import os
import subprocess
import sys
import time

CONFIGS = os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', 'vit_jax', 'configs')
FASHION_MNIST_TRAIN = 60_000


@dataclasses.dataclass
class Point:
  """One run: a recipe `file.py:arg` of vit_jax/configs, its overrides and its step count."""

  name: str
  recipe: str
  steps: int
  overrides: dict = dataclasses.field(default_factory=dict)
  needs: str = ''  # a point whose workdir must be finished first (its encoder.npz)

  def command(self, workdir):
    flags = [f'--config.{k}={v}' for k, v in self.overrides.items()]
    return [
        sys.executable,
        '-m',
        'vit_jax.main',
        f'--config={os.path.join(CONFIGS, self.recipe)}',
        f'--workdir={workdir}',
        f'--config.total_steps={self.steps}',
        *flags,
    ]


def schedule(steps, progress_every=100):
  """Warmup, logging and checkpoint overrides that suit a run of `steps` steps."""
  return {
      'warmup_steps': min(200, max(1, steps // 10)),
      'progress_every': max(1, min(progress_every, steps // 4)),
      'checkpoint_every': max(1, min(1_000, steps)),
  }


def records(workdir):
  path = os.path.join(workdir, 'metrics.jsonl')
  if not os.path.exists(path):
    return []
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]


def _devices(rs):
  for r in rs:
    if r.get('img_per_sec_per_device'):
      return max(1, round(r['examples_per_sec'] / r['img_per_sec_per_device']))
  return 1


def summary(workdir, steps=None):
  """{'step', 'wall', 'accuracy' or 'reconstruction', 'step_seconds'} of a finished run (its
  final evaluation at `steps`, or at its last step), else None."""
  rs = records(workdir)
  final = [r for r in rs if 'eval_accuracy' in r or 'eval_reconstruction_loss' in r]
  final = [r for r in final if steps is None or r['step'] == steps]
  if not final:
    return None
  devices, timed = _devices(rs), [r for r in rs if 'core_hours' in r]
  out = dict(step=final[-1]['step'], wall=None, step_seconds=step_seconds(rs))
  if timed:
    out['wall'] = timed[-1]['core_hours'] * 3600 / devices
  if 'eval_accuracy' in final[-1]:
    out['accuracy'] = final[-1]['eval_accuracy']
  if 'eval_reconstruction_loss' in final[-1]:
    out['reconstruction'] = final[-1]['eval_reconstruction_loss']
  return out


def step_seconds(rs):
  """Seconds per train step between the last two progress records before the final one
  (compilation and the final evaluation left out); None with too few records."""
  timed = [r for r in rs if 'core_hours' in r and 'train_loss' in r]
  timed = [r for r in timed if 'eval_accuracy' not in r and 'eval_reconstruction_loss' not in r]
  if len(timed) < 2 or timed[-1]['step'] <= timed[-2]['step']:
    return None
  a, b = timed[-2], timed[-1]
  return (b['core_hours'] - a['core_hours']) * 3600 / _devices(rs) / (b['step'] - a['step'])


def run(points, out, log=print):
  """Runs every unfinished point in order, one at a time; one progress line per point."""
  for i, point in enumerate(points):
    workdir = os.path.join(out, point.name)
    done = summary(workdir, point.steps)
    if done:
      log(f'[{i + 1}/{len(points)}] {point.name}: finished before ({_line(done)})')
      continue
    if point.needs and not summary(os.path.join(out, point.needs)):
      log(f'[{i + 1}/{len(points)}] {point.name}: skipped, {point.needs} did not finish')
      continue
    os.makedirs(out, exist_ok=True)
    start = time.time()
    with open(os.path.join(out, f'{point.name}.log'), 'a') as f:
      code = subprocess.run(point.command(workdir), stdout=f, stderr=subprocess.STDOUT).returncode
    with open(os.path.join(out, f'{point.name}.calls.jsonl'), 'a') as f:
      f.write(json.dumps(dict(seconds=time.time() - start, exit=code)) + '\n')
    done = summary(workdir, point.steps)
    if code or not done:
      log(f'[{i + 1}/{len(points)}] {point.name}: exit {code}, see {out}/{point.name}.log')
      continue
    log(
        f'[{i + 1}/{len(points)}] {point.name}: {point.steps} steps, '
        f'{time.time() - start:.0f} s this call, {_line(done)}'
    )


def _line(done):
  parts = [f'wall {done["wall"]:.0f} s' if done['wall'] is not None else 'wall ?']
  if done.get('step_seconds'):
    parts.append(f'{done["step_seconds"] * 1e3:.1f} ms/step')
  if 'accuracy' in done:
    parts.append(f'test accuracy {done["accuracy"]:.2%}')
  if 'reconstruction' in done:
    parts.append(f'test reconstruction {done["reconstruction"]:.4f}')
  return ', '.join(parts)


SMOKE_TEST = 640  # smoke runs evaluate on 640 test images: seconds, not minutes
SMOKE_TEST_SPLIT = f'test[:{SMOKE_TEST}]'
TEST_EXAMPLES = 10_000


def smoke_points(points, steps):
  """The seed-0 points, each cut to `steps` steps (logged every steps // 4) for timing."""
  cut = []
  for p in points:
    if _seed0(p.name) != p.name:
      continue
    overrides = dict(p.overrides, **schedule(steps, progress_every=max(1, steps // 4)))
    overrides['pp.test'] = SMOKE_TEST_SPLIT
    if p.needs:  # the smoke run of the point it needs writes the encoder
      overrides['pretrained_path'] = p.overrides['pretrained_path'].replace(
          os.sep + p.needs + os.sep, os.sep + 'smoke' + os.sep + p.needs + os.sep
      )
    cut.append(dataclasses.replace(p, steps=steps, overrides=overrides))
  return cut


def _seed0(name):
  head, _, seed = name.rpartition('_s')
  return f'{head}_s0' if head and seed.isdigit() else name


def _call_seconds(smoke_out, name):
  """Seconds of a point's one finished smoke call (process start and final eval included)."""
  path = os.path.join(smoke_out, f'{name}.calls.jsonl')
  if not os.path.exists(path):
    return None
  with open(path) as f:
    calls = [json.loads(line) for line in f if line.strip()]
  return calls[-1]['seconds'] if calls and not calls[-1]['exit'] else None


def estimate(points, smoke_out, batch, log=print):
  """Prints each point's full-run time from its seed-0 smoke run and returns the total in
  seconds (None if a smoke run is missing): start-up and compile as measured, the step time
  times the steps, and the final evaluation of the 10,000 test images scaled from the smoke
  run's 640. That evaluation is the smoke call's time beyond its training, less the process
  start of the cheapest point (whose evaluation is negligible); without call times, 2 views
  x 10,000 / batch forward passes at a third of a train step each."""
  runs = {}
  for p in points:
    name = _seed0(p.name)
    workdir = os.path.join(smoke_out, name)
    done, per_step = summary(workdir), step_seconds(records(workdir))
    if done and per_step is not None and done['wall'] is not None:
      runs[name] = (done, per_step, _call_seconds(smoke_out, name))
  outside = [call - done['wall'] for done, _, call in runs.values() if call is not None]
  process_start = min(outside) if outside else 0.0
  total, missing = 0.0, False
  log('| point | steps | smoke ms/step | start-up s | final eval s | estimated full run |')
  log('|---|---|---|---|---|---|')
  for p in points:
    if _seed0(p.name) not in runs:
      log(f'| {p.name} | {p.steps} | ? | ? | ? | ? |')
      missing = True
      continue
    done, per_step, call = runs[_seed0(p.name)]
    fixed = max(0.0, done['wall'] - done['step'] * per_step)
    if call is None:
      evaluation = 2 * TEST_EXAMPLES / batch / 3 * per_step
    else:
      evaluation = max(0.0, call - done['wall'] - process_start) * TEST_EXAMPLES / SMOKE_TEST
    seconds = process_start + fixed + p.steps * per_step + evaluation
    total += seconds
    log(
        f'| {p.name} | {p.steps} | {per_step * 1e3:.1f} | {fixed:.0f} | {evaluation:.0f} | '
        f'{hours(seconds)} |'
    )
  log(
      f'Estimated full sweep: {hours(total)} of wall time on this host'
      + (' (incomplete)' if missing else '')
  )
  return None if missing else total


def hours(seconds):
  return f'{seconds / 3600:.2f} h' if seconds >= 3600 else f'{seconds / 60:.1f} min'


def mean_and_std(values):
  """(mean, sample standard deviation; 0 for one value)."""
  mean = sum(values) / len(values)
  if len(values) == 1:
    return mean, 0.0
  return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


def mean_std(values):
  """'mean ± std (n)' of accuracies in %, or 'pending' without any."""
  if not values:
    return 'pending'
  mean, std = mean_and_std(values)
  if len(values) == 1:
    return f'{mean:.2%} (1 seed)'
  return f'{mean:.2%} ± {std:.2%} ({len(values)} seeds)'


def seeds_summary(out, names, steps):
  """(accuracies, walls, final steps) of the finished runs among `names`."""
  done = [summary(os.path.join(out, n), steps) for n in names]
  done = [d for d in done if d and 'accuracy' in d]
  return [d['accuracy'] for d in done], [d['wall'] or 0 for d in done], [d['step'] for d in done]


def pyplot():
  import matplotlib

  matplotlib.use('Agg')
  import matplotlib.pyplot as plt

  return plt
