"""Inference CLI on real Fashion-MNIST images written to PNG, and its error messages."""

import gzip
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image
import pytest

from vit_jax import checkpoint
from vit_jax import inference
from vit_jax.configs import models as model_configs
from vit_jax.datasets import class_names
from vit_jax.models import VisionTransformer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope='module')
def assets(tmp_path_factory):
  """A random 10-class 'testing' model checkpoint (32x32) and 3 Fashion-MNIST PNGs."""
  tmp = tmp_path_factory.mktemp('inference')
  model = VisionTransformer(num_classes=10, **model_configs.MODEL_CONFIGS['testing'])
  params = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3)), train=False)['params']
  leaves, tree = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.PRNGKey(1), len(leaves))
  params = jax.tree.unflatten(
      tree, [p + jax.random.normal(k, p.shape) for p, k in zip(leaves, keys)]
  )
  checkpoint.save(params, tmp / 'testing.npz')
  with gzip.open('/usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz') as f:
    images = np.frombuffer(f.read(), np.uint8)[16:].reshape(-1, 28, 28)
  paths = []
  for i in range(3):
    paths.append(str(tmp / f'fmnist_{i}.png'))
    Image.fromarray(images[i]).save(paths[-1])
  return tmp, params, paths


def test_classify_matches_the_model(assets):
  tmp, params, paths = assets
  model, loaded, size, channels, _ = inference.build(str(tmp / 'testing.npz'), 'testing')
  assert (size, channels) == (32, 3)  # 2x2 grid of 16x16 patches, from the checkpoint
  images = inference.load_images(paths, size, channels, 16)
  assert images.shape == (3, 32, 32, 3) and images.min() >= -1 and images.max() <= 1
  top = inference.classify(model, loaded, images, class_names.get_labels('fashion_mnist'))
  logits = np.asarray(model.apply({'params': params}, images, train=False))
  for row, expected in zip(top, logits):
    assert len(row) == 5
    assert row[0][0] == class_names.FASHION_MNIST[int(np.argmax(expected))]
    probs = np.exp(expected - expected.max())
    np.testing.assert_allclose(row[0][1], probs.max() / probs.sum(), rtol=1e-5)


@pytest.mark.parametrize('model_name', ['testing', None])
def test_scanned_model_classifies_the_same(assets, model_name):
  """build(scan_layers=True): stacked blocks, checked in the file layout; same probabilities."""
  tmp, _, paths = assets
  model, params, size, channels, _ = inference.build(str(tmp / 'testing.npz'), model_name)
  scanned, stacked, _, _, _ = inference.build(
      str(tmp / 'testing.npz'), model_name, scan_layers=True
  )
  assert scanned.transformer['scan_layers'] and 'encoderblock' in stacked['Transformer']
  images = inference.load_images(paths, size, channels, 16)
  names = class_names.get_labels('fashion_mnist')
  for row, scanned_row in zip(
      inference.classify(model, params, images, names),
      inference.classify(scanned, stacked, images, names),
  ):
    assert [n for n, _ in row] == [n for n, _ in scanned_row]
    np.testing.assert_allclose([p for _, p in row], [p for _, p in scanned_row], atol=1e-6)
  with pytest.raises(
      ValueError, match='parameter Transformer/encoder_norm/bias: the model expects'
  ):
    inference.build(str(tmp / 'testing.npz'), 'ViT-Ti_16', image_size=32, scan_layers=True)


@pytest.mark.slow
def test_cli_prints_top5_and_benchmarks(assets):
  tmp, params, paths = assets
  env = dict(os.environ, JAX_PLATFORMS='cpu', TF_CPP_MIN_LOG_LEVEL='2')
  out = subprocess.run(
      [
          sys.executable,
          '-m',
          'vit_jax.inference',
          f'--checkpoint={tmp / "testing.npz"}',
          '--model=testing',
          '--labels=fashion_mnist',
          *paths,
      ],
      cwd=ROOT,
      env=env,
      capture_output=True,
      text=True,
      timeout=120,
  )
  assert out.returncode == 0, out.stderr[-2000:]
  lines = out.stdout.splitlines()
  assert lines[0] == paths[0] and len(lines) == 3 * 6
  model = VisionTransformer(num_classes=10, **model_configs.MODEL_CONFIGS['testing'])
  images = inference.load_images(paths[:1], 32, 3, 16)
  expected = class_names.FASHION_MNIST[
      int(np.argmax(model.apply({'params': params}, images, train=False)))
  ]
  assert lines[1].strip().split('  ', 1)[1].strip() == expected
  bench = subprocess.run(
      [
          sys.executable,
          '-m',
          'vit_jax.inference',
          f'--checkpoint={tmp / "testing.npz"}',
          '--model=testing',
          '--benchmark',
          '--steps=3',
          '--batch=2',
      ],
      cwd=ROOT,
      env=env,
      capture_output=True,
      text=True,
      timeout=120,
  )
  assert 'images/s over 3 timed steps' in bench.stdout, bench.stderr[-2000:]
  missing = subprocess.run(
      [
          sys.executable,
          '-m',
          'vit_jax.inference',
          f'--checkpoint={tmp / "nope.npz"}',
          '--model=testing',
          *paths,
      ],
      cwd=ROOT,
      env=env,
      capture_output=True,
      text=True,
      timeout=120,
  )
  assert missing.returncode == 2 and 'Traceback' not in missing.stderr, missing.stderr[-2000:]
  assert missing.stderr.strip().splitlines()[-1] == (
      f"error: checkpoint '{tmp / 'nope.npz'}' does not exist"
  )


def test_imagenet_labels_ship_with_the_package():
  names = class_names.imagenet1k()
  assert len(names) == 1000 and names[0] == 'tench' and names[1] == 'goldfish'


def test_bad_inputs_are_clear(assets, tmp_path):
  tmp, _, _ = assets
  with pytest.raises(ValueError, match='does not exist'):
    inference.load_images([str(tmp_path / 'missing.png')], 32, 3, 16)
  (tmp_path / 'broken.png').write_text('not an image')
  with pytest.raises(ValueError, match='cannot be read'):
    inference.load_images([str(tmp_path / 'broken.png')], 32, 3, 16)
  Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / 'tiny.png')
  with pytest.raises(ValueError, match='smaller than one 16x16 patch'):
    inference.load_images([str(tmp_path / 'tiny.png')], 32, 3, 16)
  with pytest.raises(ValueError, match='parameter .* the model expects shape'):
    inference.build(str(tmp / 'testing.npz'), 'ViT-Ti_16', image_size=32)


@pytest.mark.parametrize(
    'name', sorted(set(model_configs.MODEL_CONFIGS) - set(model_configs.DIT_NAMES))
)
def test_every_registered_model_is_recognised_from_its_parameter_shapes(name):
  """The inferred config builds the same parameter tree (shapes only, nothing allocated)."""
  from vit_jax.checkpoints import architecture

  config = model_configs.MODEL_CONFIGS[name].to_dict()
  from vit_jax.models import resnet

  side = config['patches']['size'][0] * resnet.stem_downsampling(config.get('resnet')) * 2
  x = jnp.zeros((1, side, side, 3))
  shapes = lambda cfg: jax.eval_shape(
      lambda: VisionTransformer(num_classes=7, **cfg).init(jax.random.PRNGKey(0), x, train=False)
  )['params']
  want = shapes(config)
  inferred, num_classes = architecture.model_config_from_params(want)
  assert num_classes == 7
  assert jax.tree.map(lambda s: s.shape, shapes(inferred)) == jax.tree.map(lambda s: s.shape, want)
  if config['classifier'] in ('token', 'gap'):  # the unpooled ones have the same parameters
    assert inferred['classifier'] == config['classifier']
