"""Attention schedules behind one entry point, `dot_product_attention`."""
from vit_jax.attention.core import attention_weights
from vit_jax.attention.core import dense_attention

IMPLS = ('dense',)


def validate_options(impl='dense', **unused_options):
  """Raises a clear ValueError for an unknown schedule, before anything is compiled."""
  if impl not in IMPLS:
    raise ValueError(f"transformer.attention.impl={impl!r} is not one of {IMPLS}")


def dot_product_attention(q, k, v, *, impl='dense', mask=None, dropout_rng=None,
                          dropout_rate=0., deterministic=True, precision=None):
  """Attention on [batch, length, heads, head_dim]; returns the same layout and dtype as q."""
  validate_options(impl)
  return dense_attention(q, k, v, mask=mask, dropout_rng=dropout_rng,
                         dropout_rate=dropout_rate, deterministic=deterministic,
                         precision=precision)
