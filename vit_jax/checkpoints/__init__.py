"""Checkpoint formats in and out (npz, timm, Hugging Face), the model a file implies, and the
Orbax train state. `vit_jax.checkpoint` is the face users import; formats know nothing of the
train loop."""
