"""Inference and export from what training wrote: a workdir (local or gs://, against the GCS
emulator) classifies and exports as trained.

One tiny ViT run (4x4 patches on 8x8 Fashion-MNIST, class token, learned position
embedding: a model every export format can hold), checkpoints at steps 1 and 2.
"""

import gzip
import os
import subprocess
import sys

import jax
import numpy as np
from PIL import Image
import pytest
from test_gcs import BUCKET
from test_gcs import gcs  # noqa: F401 (the GCS emulator fixture, injected by name)
from test_train import tiny_config

from vit_jax import checkpoint
from vit_jax import errors
from vit_jax import export
from vit_jax import inference
from vit_jax import paths
from vit_jax import train
from vit_jax.checkpoints import orbax_state
from vit_jax.datasets import class_names as labels
from vit_jax.models import layer_stack

pytestmark = pytest.mark.slow  # every test reads the trained run of the fixture
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope='module')
def run(fashion_mnist_data_dir, tmp_path_factory):
  """(workdir, 3 Fashion-MNIST PNG paths) of a finished 2-step run."""
  tmp = tmp_path_factory.mktemp('trained')
  config = tiny_config(
      fashion_mnist_data_dir,
      **{
          'total_steps': 2,
          'checkpoint_every': 1,
          'pp.test': 'test[:1000]',
          'model.patches.size': (4, 4),
          'model.classifier': 'token',
          'model.posemb': 'learn',
          'model.transformer.scan_layers': True,
          'base_lr': 0.05,
      },
  )
  workdir = str(tmp / 'run')
  train.train_and_evaluate(config, workdir)
  with gzip.open('/usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz') as f:
    images = np.frombuffer(f.read(), np.uint8)[16:].reshape(-1, 28, 28)
  pngs = []
  for i in range(3):
    pngs.append(str(tmp / f'fmnist_{i}.png'))
    Image.fromarray(images[i]).save(pngs[-1])
  return workdir, pngs


def _probabilities(model, params, images):
  logits = model.apply({'params': params}, images, train=False)
  return np.asarray(jax.nn.softmax(logits.astype(np.float32)))


@pytest.mark.slow
def test_a_workdir_classifies_with_its_newest_or_a_given_step(run):
  workdir, pngs = run
  model, params, size, channels, names = inference.build(workdir)
  assert (size, channels) == (8, 1) and names == list(labels.FASHION_MNIST)
  images = inference.load_images(pngs, size, channels, 4)
  top = inference.classify(model, params, images, names, top_k=10)
  saved = orbax_state.load_params(os.path.join(workdir, 'checkpoints'), 2)  # scanned
  expected = _probabilities(model, layer_stack.unstack(saved), images)
  for row, probs in zip(top, expected):
    assert [n for n, _ in row] == [names[i] for i in np.argsort(-probs)]
    np.testing.assert_allclose([p for _, p in row], np.sort(probs)[::-1], rtol=1e-5)
  _, first, _, _, _ = inference.build(workdir, step=1, scan_layers=True)
  step_1 = orbax_state.load_params(os.path.join(workdir, 'checkpoints'), 1)
  jax.tree.map(np.testing.assert_array_equal, first, step_1)
  assert not np.array_equal(first['head']['kernel'], saved['head']['kernel'])
  with pytest.raises(errors.UserInputError, match=r'--step=7: .* holds the steps \[1, 2\]'):
    inference.build(workdir, step=7)
  with pytest.raises(errors.UserInputError, match='training workdir, whose config.json sets'):
    inference.build(workdir, model_name='testing')


def test_the_inference_command_reads_a_workdir(run):
  workdir, pngs = run
  env = dict(os.environ, JAX_PLATFORMS='cpu', PYTHONPATH=ROOT, TF_CPP_MIN_LOG_LEVEL='2')
  out = subprocess.run(
      [sys.executable, '-m', 'vit_jax.inference', f'--checkpoint={workdir}', '--top_k=2', *pngs],
      cwd=ROOT,
      env=env,
      capture_output=True,
      text=True,
      timeout=120,
  )
  assert out.returncode == 0, out.stderr[-2000:]
  lines = out.stdout.splitlines()
  assert lines[0] == pngs[0] and len(lines) == 3 * 3
  assert all(
      line.split('%', 1)[1].strip() in labels.FASHION_MNIST
      for line in lines
      if line.startswith('  ')
  )


@pytest.mark.parametrize(
    'fmt,name', [('npz', 'vit.npz'), ('timm', 'vit.safetensors'), ('hf', 'vit-hf')]
)
def test_export_writes_what_the_readers_load_back(run, tmp_path, fmt, name):
  workdir, pngs = run
  out = str(tmp_path / name)
  line = export.export(workdir, out, fmt)
  assert line.startswith(f'{workdir} step 2 -> {out} ({fmt})')
  model, params, size, channels, names = inference.build(workdir)
  images = inference.load_images(pngs, size, channels, 4)
  expected = _probabilities(model, params, images)
  loaded = checkpoint.load(out, num_heads=2)  # the format is detected from the content
  if fmt == 'hf':  # the folder's own config.json builds the model; id2label names the classes
    model, loaded, _, _, hf_names = inference.build(out)
    assert hf_names == names
  jax.tree.map(
      lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6),
      jax.tree.map(np.asarray, params),
      loaded,
  )
  np.testing.assert_allclose(_probabilities(model, loaded, images), expected, atol=1e-5)
  with pytest.raises(errors.UserInputError, match='exists; pass a new path'):
    export.export(workdir, out, fmt)


@pytest.mark.slow
def test_the_export_command_and_its_mistakes(run, tmp_path):
  workdir, _ = run
  env = dict(os.environ, JAX_PLATFORMS='cpu', PYTHONPATH=ROOT, TF_CPP_MIN_LOG_LEVEL='2')
  command = [sys.executable, '-m', 'vit_jax.export']
  done = subprocess.run(
      command + [workdir, '--format=npz', str(tmp_path / 'a.npz'), '--step=1'],
      cwd=ROOT,
      env=env,
      capture_output=True,
      text=True,
      timeout=120,
  )
  assert done.returncode == 0, done.stderr[-2000:]
  assert done.stdout.strip() == f'{workdir} step 1 -> {tmp_path / "a.npz"} (npz)'
  for args, expected in [
      ([str(tmp_path), '--format=npz', str(tmp_path / 'b.npz')], 'is not a training workdir'),
      ([workdir, '--format=onnx', str(tmp_path / 'b')], 'flag --format=onnx: value should be'),
      ([workdir, '--format=npz'], 'give WORKDIR and OUT'),
  ]:
    refused = subprocess.run(
        command + args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    lines = refused.stderr.strip().splitlines()
    assert refused.returncode == 2 and len(lines) == 1, refused.stderr[-2000:]
    assert lines[0].startswith('error: ') and expected in lines[0], lines[0]


def test_a_workdir_in_a_bucket_classifies_and_exports(gcs, run, tmp_path):
  del gcs
  local, pngs = run
  remote = f'gs://{BUCKET}/trained'
  for root, _, files in os.walk(local):  # the run's files, copied as they are
    for name in files:
      path = os.path.join(root, name)
      with open(path, 'rb') as f:
        paths.write_bytes(f'{remote}/{os.path.relpath(path, local)}', f.read())
  want_model, want_params, size, channels, names = inference.build(local)
  model, params, _, _, remote_names = inference.build(remote)
  assert remote_names == names
  images = inference.load_images(pngs, size, channels, 4)
  np.testing.assert_array_equal(
      model.apply({'params': params}, images, train=False),
      want_model.apply({'params': want_params}, images, train=False),
  )
  out = f'gs://{BUCKET}/exported/vit.npz'
  assert export.export(remote, out, 'npz').endswith(f'-> {out} (npz)')
  assert paths.exists(out)
  del tmp_path
