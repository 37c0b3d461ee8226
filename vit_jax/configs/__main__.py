"""Prints the directory of the installed config files, for `--config` outside a checkout.

python -m vit_jax.main --config="$(python -m vit_jax.configs)/vit.py:b16,cifar10" ...
"""

import os

print(os.path.dirname(os.path.abspath(__file__)))
