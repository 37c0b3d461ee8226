"""PatchEmbedding (reshape + matmul) against nn.Conv(kernel=stride=patch): params and numbers."""

import json
import pathlib

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vit_jax import checkpoint
from vit_jax.models import patch_embedding
from vit_jax.models import VisionTransformer

FIXTURES = pathlib.Path(__file__).parent / 'fixtures'
CASES = {  # name: (input shape, patch): ViT, the hybrid's 1x1 patches on a feature map, PiT
    'vit_16x16_rgb': ((2, 32, 48, 3), (16, 16)),
    'hybrid_1x1_on_features': ((2, 4, 4, 64), (1, 1)),
    'pit_1x1_pixels': ((2, 6, 5, 3), (1, 1)),
    'non_square_4x2': ((1, 8, 6, 2), (4, 2)),
}


def _pair(patch, features=24):
  conv = nn.Conv(features, kernel_size=patch, strides=patch, padding='VALID')
  return conv, patch_embedding.PatchEmbedding(features, patch_size=patch)


@pytest.mark.parametrize('case', sorted(CASES))
def test_same_parameters_from_the_same_seed(case):
  shape, patch = CASES[case]
  conv, matmul = _pair(patch)
  x = jnp.zeros(shape)
  conv_params = conv.init(jax.random.PRNGKey(3), x)['params']
  matmul_params = matmul.init(jax.random.PRNGKey(3), x)['params']
  assert conv_params['kernel'].shape == patch + (shape[-1], 24)
  jax.tree.map(np.testing.assert_array_equal, matmul_params, conv_params)
  assert float(jnp.std(matmul_params['kernel'])) > 0 and not jnp.any(matmul_params['bias'])


@pytest.mark.parametrize('case', sorted(CASES))
def test_forward_and_gradients_equal_the_conv(case):
  shape, patch = CASES[case]
  conv, matmul = _pair(patch)
  x = jax.random.normal(jax.random.PRNGKey(0), shape)
  params = conv.init(jax.random.PRNGKey(1), x)['params']
  params = dict(params, bias=jax.random.normal(jax.random.PRNGKey(2), params['bias'].shape))
  weights = jax.random.normal(jax.random.PRNGKey(4), conv.apply({'params': params}, x).shape)

  def loss(module, p, x):
    return jnp.sum(module.apply({'params': p}, x) * weights)

  for module in (conv, matmul):
    assert module.apply({'params': params}, x).shape == weights.shape
  np.testing.assert_allclose(
      matmul.apply({'params': params}, x), conv.apply({'params': params}, x), atol=1e-5, rtol=1e-5
  )
  grads = [jax.grad(loss, argnums=(1, 2))(m, params, x) for m in (conv, matmul)]
  for want, got in zip(jax.tree.leaves(grads[0]), jax.tree.leaves(grads[1])):
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=1e-5)


def test_bfloat16_compute_and_params():
  conv, matmul = _pair((4, 4))
  x = jax.random.normal(jax.random.PRNGKey(0), (1, 8, 8, 3))
  module = matmul.clone(dtype=jnp.bfloat16, param_dtype=jnp.bfloat16)
  params = module.init(jax.random.PRNGKey(1), x)['params']
  assert params['kernel'].dtype == jnp.bfloat16
  out = module.apply({'params': params}, x)
  assert out.dtype == jnp.bfloat16
  params32 = jax.tree.map(lambda p: p.astype(jnp.float32), params)
  np.testing.assert_allclose(
      np.asarray(out, np.float32), conv.apply({'params': params32}, x), atol=0.1
  )


def test_indivisible_input_is_a_clear_error():
  with pytest.raises(ValueError, match=r'10x8 does not divide into 4x4 patches'):
    patch_embedding.PatchEmbedding(8, patch_size=(4, 4)).init(
        jax.random.PRNGKey(0), jnp.zeros((1, 10, 8, 3))
    )


@pytest.mark.parametrize('name', ['gap', 'repr'])
def test_model_with_matmul_embedding_reproduces_the_original_logits(name):
  config = json.loads((FIXTURES / f'{name}_config.json').read_text())
  model = VisionTransformer(num_classes=config['num_classes'], **config['model_config'])
  params = checkpoint.load(FIXTURES / f'{name}.npz')
  x = np.load(FIXTURES / f'{name}_inputs.npy')
  forward = lambda p: model.apply({'params': p}, x, train=False)
  assert 'conv_general_dilated' not in str(jax.make_jaxpr(forward)(params))
  np.testing.assert_allclose(
      model.apply({'params': params}, x, train=False),
      np.load(FIXTURES / f'{name}_logits.npy'),
      atol=1e-5,
      rtol=1e-5,
  )
  flat = flax.traverse_util.flatten_dict(params)
  assert flat[('embedding', 'kernel')].shape == (4, 4, 3, 64)
