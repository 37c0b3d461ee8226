"""vit_jax: Vision Transformer and Pixel Transformer in JAX/Flax."""
