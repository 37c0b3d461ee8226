"""`python -m vit_jax.evaluate`: FID and IS end to end on generated Inception weights, against
direct numpy computations, and one clear error for each bad input before anything compiles.

The command runs once as a subprocess on 4 simulated devices (a module fixture); the other
checks call `evaluate` in-process on two devices, sharing the compiled network with
tests/test_inception.py.
"""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
import scipy.special
from xla_test_flags import xla_flags

from vit_jax import errors
from vit_jax import evaluate
from vit_jax.evaluation import inception
from vit_jax.evaluation import inception_features
from vit_jax.runtime import partitioning

sys.path.insert(0, os.path.join(os.path.dirname(__file__), 'fixtures'))
import inception_random_weights

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope='module')
def files(tmp_path_factory):
  """Generated weights (npz), 3 samples and their brightened copies (ADM layout)."""
  d = tmp_path_factory.mktemp('evaluate')
  state_dict = inception_random_weights.state_dict(inception.state_dict_shapes())
  rng = np.random.default_rng(0)
  images = rng.integers(0, 200, size=(3, 24, 24, 3)).astype(np.uint8)
  out = {k: str(d / f'{k}.npz') for k in ('weights', 'images', 'shifted')}
  np.savez(out['weights'], **state_dict)
  np.savez(out['images'], arr_0=images)
  np.savez(out['shifted'], arr_0=images + 50)
  return dict(out, dir=d, state_dict=state_dict)


@pytest.fixture(scope='module')
def mesh():
  return partitioning.create_mesh({'data': -1}, devices=jax.devices()[:2])


@pytest.fixture(scope='module')
def direct(files, mesh):
  """pool features and unbiased logits of the images and the shifted images."""
  variables = inception.variables_from_state_dict(files['state_dict'])
  network = inception_features.InceptionFeatures(variables, batch=2, mesh=mesh)
  return {k: network(np.load(files[k])['arr_0']) for k in ('images', 'shifted')}


@pytest.fixture(scope='module')
def cli(files):
  """The command on 4 devices: shifted samples against statistics computed from images."""
  d = files['dir']
  env = dict(os.environ, XLA_FLAGS=xla_flags(4), JAX_PLATFORMS='cpu', PYTHONPATH=ROOT)
  args = [
      f'--inception={files["weights"]}',
      f'--samples={files["shifted"]}',
      f'--ref={files["images"]}',
      f'--ref_stats_out={d / "stats.npz"}',
      f'--json_out={d / "result.json"}',
      '--batch=4',
      '--splits=1',
  ]
  run = subprocess.run(
      [sys.executable, '-m', 'vit_jax.evaluate', *args],
      env=env,
      cwd=str(d),
      capture_output=True,
      text=True,
      timeout=300,
  )
  assert run.returncode == 0, run.stderr[-3000:]
  return run, json.loads((d / 'result.json').read_text()), str(d / 'stats.npz')


def direct_fid(f1, f2):
  """FID of two small feature sets, without sqrtm: for S = A^T A, tr((S1 S2)^(1/2)) is the
  nuclear norm of A1 A2^T."""
  a1, a2 = f1 - f1.mean(0), f2 - f2.mean(0)
  a1, a2 = a1 / np.sqrt(len(f1) - 1), a2 / np.sqrt(len(f2) - 1)
  nuclear = np.linalg.svd(a1 @ a2.T, compute_uv=False).sum()
  diff = f1.mean(0) - f2.mean(0)
  return diff @ diff + np.sum(a1 * a1) + np.sum(a2 * a2) - 2 * nuclear


def direct_inception_score(logits):
  p = scipy.special.softmax(np.float64(logits), axis=1)
  marginal = p.mean(0)
  return np.exp(np.mean(np.sum(p * np.log(p / marginal), axis=1)))


def test_the_command_writes_fid_is_and_the_reference_statistics(cli, direct):
  run, result, stats = cli
  assert 'FID: ' in run.stdout and 'Inception Score: ' in run.stdout
  ref = np.float64(direct['images']['pool'])
  with np.load(stats) as s:
    np.testing.assert_allclose(s['mu'], ref.mean(0), atol=1e-5)
    np.testing.assert_allclose(s['sigma'], np.cov(ref, rowvar=False), atol=1e-5)
  expected = direct_fid(ref, np.float64(direct['shifted']['pool']))
  assert expected > 1
  assert result['fid'] == pytest.approx(expected, rel=1e-4)
  is_expected = direct_inception_score(direct['shifted']['logits_unbiased'])
  assert result['inception_score'] == pytest.approx(is_expected, rel=1e-4)
  assert result['num_samples'] == 3 and result['inception_score_std'] == 0


def test_a_set_against_its_own_statistics_is_zero(cli, files, mesh):
  result = evaluate.evaluate(
      files['weights'], cli[2], samples=files['images'], batch=2, splits=1, mesh=mesh
  )
  assert result['fid'] == pytest.approx(0, abs=1e-6)


def bad(tmp_path, **arrays):
  path = str(tmp_path / f'bad_{len(list(tmp_path.iterdir()))}.npz')
  np.savez(path, **arrays)
  return path


def test_bad_inputs_are_one_clear_error_before_any_compile(files, tmp_path):
  missing_weights = str(tmp_path / 'pt_inception.pth')  # so nothing after the check can run
  call = lambda **kw: evaluate.evaluate(
      kw.pop('inception', missing_weights), kw.pop('ref', files['images']), **{'splits': 1, **kw}
  )
  stats64 = bad(tmp_path, mu=np.zeros(64), sigma=np.eye(64))
  with pytest.raises(errors.UserInputError, match=r'mean \(64,\).*2048-d'):
    call(ref=stats64, samples=files['images'])
  gray = bad(tmp_path, arr_0=np.zeros((3, 8, 8, 1), np.uint8))
  with pytest.raises(errors.UserInputError, match=r'shape \(3, 8, 8, 1\), not \[n, height'):
    call(samples=gray)
  floats = bad(tmp_path, arr_0=np.zeros((3, 8, 8, 3), np.float32))
  with pytest.raises(errors.UserInputError, match='float32.*uint8 in 0..255'):
    call(samples=floats)
  with pytest.raises(errors.MissingInputError, match='samples .*nope.npz'):
    call(samples=str(tmp_path / 'nope.npz'))
  with pytest.raises(errors.MissingInputError, match='reference .*nope.npz'):
    call(ref=str(tmp_path / 'nope.npz'), samples=files['images'])
  with pytest.raises(errors.MissingInputError, match='download https://github.com/mseitzer'):
    call(samples=files['images'])
  with pytest.raises(errors.UserInputError, match='fewer than the 10 Inception Score splits'):
    call(samples=files['images'], splits=10)


def test_the_command_prints_one_line_and_exits_2(files, tmp_path):
  missing = str(tmp_path / 'pt_inception-2015-12-05-6726825d.pth')
  run = subprocess.run(
      [
          sys.executable,
          '-m',
          'vit_jax.evaluate',
          f'--inception={missing}',
          f'--ref={files["images"]}',
          f'--samples={files["images"]}',
          '--splits=1',
      ],
      env=dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS='cpu'),
      capture_output=True,
      text=True,
      timeout=120,
  )
  assert run.returncode == 2
  lines = run.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith('error: Inception weights') and missing in lines[0]
  assert 'convert' in lines[0]


def test_a_folder_is_center_cropped_as_adm_prepares_its_batches(tmp_path):
  from PIL import Image

  from vit_jax.evaluation import image_sources

  (tmp_path / 'a' / 'b').mkdir(parents=True)
  wide = np.zeros((40, 80, 3), np.uint8)
  wide[:, 10:70] = 255  # the crop keeps the white middle (and bicubic's margin), not the sides
  Image.fromarray(wide).save(tmp_path / 'a' / 'wide.png')
  Image.fromarray(np.full((70, 50), 90, np.uint8)).save(tmp_path / 'a' / 'b' / 'gray.jpg')
  (tmp_path / 'notes.txt').write_text('not an image')
  images = image_sources.open_images(str(tmp_path), 'reference', 16)
  (batch,) = list(images.batches(8))
  assert batch.shape == (2, 16, 16, 3) and batch.dtype == np.uint8
  assert np.abs(batch[0].astype(int) - 90).max() <= 2  # a/b/gray.jpg sorts first
  assert batch[1].min() >= 250
