"""Bridges Flax's MultiHeadDotProductAttention to vit_jax.attention.

Flax's attention module owns the q/k/v/out projections (so parameter names match the original);
this file only supplies its `attention_fn`, which runs the schedule named in the model config.
"""

from collections.abc import Mapping
from typing import Any

import flax.linen as nn

from vit_jax import attention


def make_attention_fn(attention_config: Mapping[str, Any] | None = None):
  """Returns an `attention_fn` for nn.MultiHeadDotProductAttention.

  `attention_config` holds keyword arguments of `vit_jax.attention.dot_product_attention`
  (`impl`, `block_size`, `kernel`); None or {} means impl='auto', which is dense (the
  original's numerics) for the short sequences of every ViT config.
  """
  options = dict(attention_config or {})
  attention.validate_options(**options)

  def attention_fn(
      query,
      key,
      value,
      mask=None,
      dropout_rng=None,
      dropout_rate=0.0,
      deterministic=True,
      precision=None,
      module: nn.Module | None = None,
  ):
    if module is not None:
      # sow_weights=True: record the softmax weights for attention maps (dense, small inputs).
      weights = attention.attention_weights(query, key, mask=mask)
      module.sow('intermediates', 'attention_weights', weights)
    return attention.dot_product_attention(
        query,
        key,
        value,
        mask=mask,
        dropout_rng=dropout_rng,
        dropout_rate=dropout_rate,
        deterministic=deterministic,
        precision=precision,
        **options,
    )

  return attention_fn
