"""A non-editable install: the wheel holds the package and its configs (as vit_jax.configs, no
top-level `configs`), the license and the accelerator extras; installed elsewhere, the main job
and the inference CLI run from another directory."""

import os
import pathlib
import shutil
import subprocess
import sys
import zipfile

import numpy as np
from PIL import Image
import pytest
from xla_test_flags import xla_flags

ROOT = pathlib.Path(__file__).parents[1]
FIXTURES = ROOT / 'tests' / 'fixtures'


@pytest.fixture(scope='module')
def installed(tmp_path_factory):
  """(wheel path, site dir): the repository's wheel, installed into a bare target directory."""
  tmp = tmp_path_factory.mktemp('packaging')
  source = tmp / 'source'
  ignore = shutil.ignore_patterns('__pycache__', '*.egg-info')
  shutil.copytree(ROOT / 'vit_jax', source / 'vit_jax', ignore=ignore)
  for name in ('pyproject.toml', 'LICENSE', 'README.md'):
    shutil.copy(ROOT / name, source / name)
  subprocess.run(
      [
          sys.executable,
          '-m',
          'pip',
          'wheel',
          '-q',
          '--no-deps',
          '--no-build-isolation',
          '-w',
          str(tmp / 'wheel'),
          str(source),
      ],
      check=True,
      capture_output=True,
  )
  (wheel,) = (tmp / 'wheel').glob('vit_jax-*.whl')
  site = tmp / 'site'
  subprocess.run(
      [
          sys.executable,
          '-m',
          'pip',
          'install',
          '-q',
          '--no-deps',
          '--target',
          str(site),
          str(wheel),
      ],
      check=True,
      capture_output=True,
  )
  return wheel, site


def _run(site, cwd, *args, timeout=300):
  env = dict(os.environ, PYTHONPATH=str(site), JAX_PLATFORMS='cpu', VIT_JAX_TCMALLOC='0')
  env['XLA_FLAGS'] = xla_flags()  # no device count: the preset's own cpu_devices
  return subprocess.run(
      [sys.executable, *args],
      cwd=cwd,
      env=env,
      capture_output=True,
      text=True,
      timeout=timeout,
      check=False,
  )


def test_wheel_contents_and_metadata(installed):
  wheel, _ = installed
  with zipfile.ZipFile(wheel) as z:
    names = z.namelist()
    info = next(n for n in names if n.endswith('.dist-info/METADATA'))
    metadata = z.read(info).decode()
    top_level = z.read(info.replace('METADATA', 'top_level.txt')).decode().split()
  assert top_level == ['vit_jax']
  assert not any(n.startswith('configs/') for n in names)
  for module in ('__init__', '__main__', 'common', 'models', 'vit', 'pit', 'augreg'):
    assert f'vit_jax/configs/{module}.py' in names
  assert 'vit_jax/data/imagenet1k_labels.tsv' in names
  license_file = next(
      n
      for n in names
      if n.endswith('dist-info/LICENSE') or n.endswith('dist-info/licenses/LICENSE')
  )
  with zipfile.ZipFile(wheel) as z:
    assert 'Apache License' in z.read(license_file).decode()[:200]
  assert 'Provides-Extra: tpu' in metadata and 'Provides-Extra: cuda12' in metadata
  assert 'Requires-Dist: jax[tpu]<0.11,>=0.10.2; extra == "tpu"' in metadata
  assert 'Requires-Dist: jax[cuda12]<0.11,>=0.10.2; extra == "cuda12"' in metadata


@pytest.mark.slow
def test_installed_main_job_and_inference_run_from_another_directory(
    installed, fashion_mnist_data_dir, tmp_path
):
  _, site = installed
  where = _run(site, tmp_path, '-c', 'import vit_jax; print(vit_jax.__file__)')
  assert where.stdout.strip() == str(site / 'vit_jax' / '__init__.py'), where.stderr
  configs = _run(site, tmp_path, '-m', 'vit_jax.configs').stdout.strip()
  assert configs == str(site / 'vit_jax' / 'configs')
  job = _run(
      site,
      tmp_path,
      '-m',
      'vit_jax.main',
      f'--workdir={tmp_path / "work"}',
      f'--config={configs}/pit.py:fashion_mnist',
      f'--config.tfds_data_dir={fashion_mnist_data_dir}',
      '--config.pp.crop=8',
      '--config.batch=16',
      '--config.batch_eval=64',
      '--config.pp.test=test[:64]',
      '--config.total_steps=3',
      '--config.warmup_steps=1',
      '--config.model.hidden_size=16',
      '--config.model.transformer.mlp_dim=16',
      '--config.model.transformer.num_layers=1',
      '--config.cpu_devices=2',
  )
  assert job.returncode == 0, job.stderr[-3000:]
  assert (tmp_path / 'work' / 'config.json').exists()
  image = tmp_path / 'shirt.png'
  Image.fromarray(np.random.default_rng(0).integers(0, 255, (32, 32, 3), np.uint8)).save(image)
  cli = _run(
      site, tmp_path, '-m', 'vit_jax.inference', f'--checkpoint={FIXTURES / "gap.npz"}', str(image)
  )
  assert cli.returncode == 0, cli.stderr[-3000:]
  assert cli.stdout.splitlines()[0] == str(image) and len(cli.stdout.splitlines()) == 6
