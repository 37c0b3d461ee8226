"""Class names: ImageNet-1k (shipped with the package), Fashion-MNIST, or a text file."""

import importlib.resources

from vit_jax import errors
from vit_jax import paths

FASHION_MNIST = (
    'T-shirt/top',
    'Trouser',
    'Pullover',
    'Dress',
    'Coat',
    'Sandal',
    'Shirt',
    'Sneaker',
    'Bag',
    'Ankle boot',
)


def imagenet1k():
  """The 1,000 ImageNet-1k class names in the index order of ViT checkpoints."""
  text = importlib.resources.files('vit_jax').joinpath('data/imagenet1k_labels.tsv').read_text()
  rows = [line.split('\t') for line in text.splitlines()[1:] if line.strip()]
  return [lemmas.split(',')[0].strip() for _, _, lemmas in rows]


def get_labels(name):
  """'imagenet1k', 'fashion_mnist', or a path (local or gs://) to a file with one class name
  per line."""
  if name == 'imagenet1k':
    return imagenet1k()
  if name == 'fashion_mnist':
    return list(FASHION_MNIST)
  if paths.exists(name):
    return [line.strip() for line in paths.read_text(name).splitlines() if line.strip()]
  raise errors.UserInputError(
      f"labels={name!r}: use 'imagenet1k', 'fashion_mnist' or a path to a text "
      'file with one class name per line'
  )
