"""Pretrained weights in and out, under the original's import path: `vit_jax.checkpoint.load`.

The formats live in `vit_jax/checkpoints/`; this module is the face the original's users and
notebooks import. `load(path)` detects the format (original / Linen / AugReg / big_vision npz,
timm, Hugging Face) and returns the parameter tree of `VisionTransformer`.
"""

from vit_jax.checkpoints.loading import check_shapes
from vit_jax.checkpoints.loading import export_hf
from vit_jax.checkpoints.loading import export_timm
from vit_jax.checkpoints.loading import load
from vit_jax.checkpoints.loading import load_pretrained
from vit_jax.checkpoints.loading import load_with_format
from vit_jax.checkpoints.loading import POSEMB_PATH
from vit_jax.checkpoints.loading import resize_posemb
from vit_jax.checkpoints.loading import save

__all__ = [
    'POSEMB_PATH',
    'check_shapes',
    'export_hf',
    'export_timm',
    'load',
    'load_pretrained',
    'load_with_format',
    'resize_posemb',
    'save',
]
