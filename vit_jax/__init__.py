"""vit_jax: Vision Transformer and Pixel Transformer in JAX/Flax."""

# First, so that etils.epath (also used by Orbax) sends gs:// through gcsfs; see paths.py.
from vit_jax import paths as _paths
