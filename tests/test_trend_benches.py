"""bench/sequence_length.py and bench/mae_few_labels.py: planning, resume skips and reports
from synthetic workdirs (no training)."""

import json
import os
import pathlib
import sys

import pytest

BENCH = pathlib.Path(__file__).resolve().parent.parent / 'bench'
sys.path.insert(0, str(BENCH))

import mae_few_labels
import sequence_length
import sweep


def _fake_run(workdir, steps, accuracy=None, reconstruction=None, devices=2):
  """A metrics.jsonl as a finished run writes it: progress records, then the final eval."""
  os.makedirs(workdir, exist_ok=True)
  rows = []
  for step in (steps // 2, steps - 1, steps):
    row = dict(step=step, train_loss=1.0, examples_per_sec=100.0 * devices)
    row.update(img_per_sec_per_device=100.0, core_hours=devices * (10 + step * 0.05) / 3600)
    rows.append(row)
  final = {'eval_accuracy': accuracy} if accuracy is not None else {}
  if reconstruction is not None:
    final = {'eval_reconstruction_loss': reconstruction}
  rows[-1].update(final)
  with open(os.path.join(workdir, 'metrics.jsonl'), 'w') as f:
    f.writelines(json.dumps(r) + '\n' for r in rows)


def test_sequence_length_plan_shares_the_28x28_patch2_point():
  points = sequence_length.plan(epochs=2, seeds=2, batch=64, with_56=True)
  names = [p.name for p in points]
  assert len(names) == len(set(names)) == 2 * 6  # (a) 4 points + (b) 14x14 and 56x56
  assert names[:6] == [
      f'i{s}_p{p}_s0' for s, p in ((28, 7), (28, 4), (14, 1), (28, 2), (56, 4), (28, 1))
  ]
  point = points[0]
  assert point.steps == 2 * 937 and point.overrides['model.patches.size'] == '(7,7)'
  command = point.command('/w')
  assert '--config.pp.crop=28' in command and '--config.total_steps=1874' in command
  assert command[3].endswith(os.path.join('vit_jax', 'configs', 'pit.py:fashion_mnist'))


def test_sequence_length_report_from_workdirs(tmp_path, capsys):
  steps = sequence_length.steps(1, 64)
  for seed, acc in ((0, 0.80), (1, 0.84)):
    _fake_run(tmp_path / f'i28_p2_s{seed}', steps, accuracy=acc)
  _fake_run(tmp_path / 'i28_p4_s0', steps, accuracy=0.79)
  _fake_run(tmp_path / 'i28_p7_s0', steps - 5, accuracy=0.7)  # not at the planned step
  text = sequence_length.report(str(tmp_path), 1, 2, 64, False)
  assert '| (a) | 196 | 2 | 28x28 | 1 | 937 | 0.9 min | 82.00% ± 2.83% (2 seeds) |' in text
  assert '| (b) | 196 | 2 | 28x28 |' in text and '79.00% (1 seed)' in text
  assert '| (a) | 16 | 7 | 28x28 | 1 | - | - | pending |' in text
  for name in ('sequence_length.md', 'sequence_length_a.png', 'sequence_length_b.png'):
    assert (tmp_path / name).stat().st_size > 0
  # a finished point is skipped without starting anything
  points = [p for p in sequence_length.plan(1, 2, 64, False) if p.name == 'i28_p2_s0']
  sweep.run(points, str(tmp_path))
  assert 'finished before' in capsys.readouterr().out


def test_estimate_from_smoke_runs(tmp_path):
  _fake_run(tmp_path / 'i28_p7_s0', 40, accuracy=0.3)
  points = [p for p in sequence_length.plan(1, 2, 64, False) if 'p7' in p.name]
  lines = []
  total = sweep.estimate(points, str(tmp_path), 64, log=lines.append)
  # 50 ms/step, 10 s start-up: 2 seeds x (10 + (937 + 104.2) x 0.05) s
  assert total == pytest.approx(2 * (10 + (937 + 2 * 10_000 / 64 / 3) * 0.05))
  assert lines[-1].startswith('Estimated full sweep:')
  # with the smoke call's time: 12 s beyond training, all process start (the only point)
  wall = 10 + 40 * 0.05
  (tmp_path / 'i28_p7_s0.calls.jsonl').write_text(json.dumps(dict(seconds=wall + 12, exit=0)))
  total = sweep.estimate(points, str(tmp_path), 64, log=lines.append)
  assert total == pytest.approx(2 * (12 + 10 + 937 * 0.05))
  smoke = sweep.smoke_points(points, 20)
  assert [p.name for p in smoke] == ['i28_p7_s0'] and smoke[0].steps == 20
  assert smoke[0].overrides['pp.test'] == sweep.SMOKE_TEST_SPLIT


def test_mae_few_labels_plan_and_report(tmp_path):
  args = (['vit2', 'pit'], [0.01, 0.1], 1, 10, 50, 2)
  points = mae_few_labels.plan(str(tmp_path), *args)
  names = [p.name for p in points]
  assert names[0] == 'vit2_mae' and names.index('pit_mae') == 9  # ViT/2 first
  tuned = {p.name: p for p in points}['vit2_f0.01_mae_s1']
  assert tuned.needs == 'vit2_mae' and tuned.steps == 93  # 10 passes over 600 images
  assert tuned.overrides['pp.train_labelled_fraction'] == 0.01
  assert tuned.overrides['pretrained_path'] == str(tmp_path / 'vit2_mae' / 'encoder.npz')
  assert 'pretrained_path' not in {p.name: p for p in points}['vit2_f0.1_scratch_s0'].overrides
  # smoke runs fine-tune the smoke run's encoder
  smoke = {p.name: p for p in sweep.smoke_points(points, 8)}
  assert smoke['vit2_f0.1_mae_s0'].overrides['pretrained_path'] == str(
      tmp_path / 'smoke' / 'vit2_mae' / 'encoder.npz'
  )
  _fake_run(tmp_path / 'vit2_mae', mae_few_labels.pretrain_steps(1), reconstruction=0.1234)
  for seed in (0, 1):
    _fake_run(tmp_path / f'vit2_f0.01_mae_s{seed}', 93, accuracy=0.70 + seed / 100)
    _fake_run(tmp_path / f'vit2_f0.01_scratch_s{seed}', 93, accuracy=0.60)
  text = mae_few_labels.report(str(tmp_path), *args)
  assert '| ViT/2 (196 tokens) | none | 60,000 | MAE pre-training | 937 |' in text
  assert 'reconstruction 0.1234' in text
  assert '| ViT/2 (196 tokens) | 1% | 600 | MAE + fine-tuning | 93 |' in text
  assert '70.50% ± 0.71% (2 seeds)' in text and '60.00% ± 0.00% (2 seeds)' in text
  assert '| PiT (784 tokens) | 10% | 6,000 | from scratch | - | - | pending |' in text
  assert (tmp_path / 'mae_few_labels.png').stat().st_size > 0
