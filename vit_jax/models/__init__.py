"""ViT / PiT / hybrid models."""

from vit_jax.models.vit import Encoder
from vit_jax.models.vit import Encoder1DBlock
from vit_jax.models.vit import MlpBlock
from vit_jax.models.vit import VisionTransformer
