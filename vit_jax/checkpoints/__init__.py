"""Checkpoint formats in and out (npz, timm, Hugging Face), the model a file implies, the
Orbax train state, and a training workdir read as a model (trained_run). `vit_jax.checkpoint`
is the face users import; formats know nothing of the train loop."""
