"""model_flops: the analytic ViT forward against published figures and compiled programs."""

import jax
import jax.numpy as jnp
import ml_collections
import pytest

from vit_jax.configs import models
from vit_jax.models import VisionTransformer
from vit_jax.perf import hlo_flops
from vit_jax.perf import model_flops


@pytest.mark.parametrize(
    'name,published', [('ViT-Ti_16', 1.3), ('ViT-S_16', 4.6), ('ViT-B_16', 17.6)]
)
def test_matches_the_published_multiply_adds_at_224(name, published):
  """DeiT (Touvron et al. 2021, Table 1) quotes 1.3 / 4.6 / 17.6 G "FLOPs" for Ti/S/B 16 at
  224x224 and 1000 classes, counting a multiply-add once; here it is 2 FLOPs."""
  flops = model_flops.vit_forward_flops(models.MODEL_CONFIGS[name], 224, 3, 1000)
  assert round(flops / 2e9, 1) == published


def _small(classifier, representation_size=None):
  config = ml_collections.ConfigDict(models.MODEL_CONFIGS['testing'].to_dict())
  config.update(
      hidden_size=24,
      classifier=classifier,
      representation_size=representation_size,
      patches={'size': (4, 2)},
  )
  config.transformer.update(mlp_dim=40, num_heads=2, num_layers=2)
  return config


@pytest.mark.parametrize(
    'classifier,representation_size',
    [('token', 12), ('gap', None), ('map', None), ('unpooled', 16), ('token_unpooled', None)],
)
def test_equals_the_compiled_forward_pass(classifier, representation_size):
  """Every matrix multiplication of the compiled (loop-free) forward, counted from its HLO."""
  config = _small(classifier, representation_size)
  model = VisionTransformer(num_classes=7, **config)
  images = jnp.zeros((3, 16, 12, 2))
  params = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), images, train=False))
  compiled = jax.jit(lambda p, x: model.apply(p, x, train=False)).lower(params, images).compile()
  expected = 3 * model_flops.vit_forward_flops(config, (16, 12), 2, 7)
  assert hlo_flops.count(compiled).flops == expected


def test_hybrids_are_refused_with_the_way_out():
  with pytest.raises(ValueError, match='hlo_flops'):
    model_flops.vit_forward_flops(models.MODEL_CONFIGS['R50+ViT-B_16'], 224, 3, 1000)
