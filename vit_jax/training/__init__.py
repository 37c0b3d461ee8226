"""The parts of the one train loop (vit_jax/train.py): its jitted steps and train state
(`steps`), learning-rate schedules and optimizers (`optim`), and metric output (`metrics`).

The loop itself stays `vit_jax.train`, where the original keeps it.
"""
