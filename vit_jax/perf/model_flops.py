"""Analytic FLOPs of a ViT / PiT forward pass, from its model config (one image).

Matrix multiplications only, a multiply-add counted as 2 FLOPs (the convention of XLA's cost
analysis and of MFU). Papers and timm often quote multiply-adds as "FLOPs": ViT-B/16 at
224x224 is 17.6 G multiply-adds there, 35.1 GFLOP here. With N patches, L tokens (N plus a
class token for 'token' classifiers), width D, MLP width M:

  patch embedding   2 * N * (patch_h * patch_w * channels) * D
  per layer         8 * L * D^2  (q, k, v, out projections)
                  + 4 * L^2 * D  (logits q.k and weights.v)
                  + 4 * L * D * M  (MLP)
  head              pre_logits 2 * D * R, classifier 2 * (R or D) * classes, per pooled
                    vector (every token for the unpooled classifiers); the 'map' head adds
                    its probe attention and MLP.

A train step (forward + gradients of activations and weights) is about 3x the forward; the
patch embedding's input gradient is not needed, so slightly less.
"""


def _pooled_head(d, num_classes, representation_size):
  flops, width = 0, d
  if representation_size is not None:
    flops += 2 * d * representation_size
    width = representation_size
  if num_classes:
    flops += 2 * width * num_classes
  return flops


def _map_head(tokens, d, mlp_dim):
  """big_vision's MAP head: one learned probe attends to every token, then an MLP."""
  return (
      2 * d * d
      + 2 * tokens * d * 2 * d  # probe query; keys and values of the tokens
      + 2 * tokens * d * 2  # logits and weights.values for one query
      + 2 * d * d  # output projection
      + 4 * d * mlp_dim
  )  # MLP on the pooled vector


def vit_forward_flops(model_config, image_size, channels, num_classes):
  """FLOPs of one image's forward pass; `image_size` is (height, width) or an int."""
  if model_config.get('resnet') is not None:
    raise ValueError(
        f'{model_config.get("model_name")}: analytic FLOPs cover ViT and PiT, '
        'not ResNet hybrids (model.resnet is set); count the compiled program '
        'with vit_jax.perf.hlo_flops instead.'
    )
  height, width = (image_size, image_size) if isinstance(image_size, int) else image_size
  ph, pw = model_config.patches.size
  d = model_config.hidden_size
  patches = (height // ph) * (width // pw)
  flops = 2 * patches * ph * pw * channels * d
  classifier = model_config.get('classifier', 'token')
  t = model_config.get('transformer')
  tokens = patches + (1 if t is not None and classifier in ('token', 'token_unpooled') else 0)
  if t is not None:
    m = t.mlp_dim
    per_layer = 8 * tokens * d * d + 4 * tokens * tokens * d + 4 * tokens * d * m
    flops += t.num_layers * per_layer
  if classifier == 'map':
    flops += _map_head(tokens, d, t.mlp_dim)
  pooled = tokens if classifier in ('unpooled', 'token_unpooled') else 1
  flops += pooled * _pooled_head(d, num_classes, model_config.get('representation_size'))
  return flops
