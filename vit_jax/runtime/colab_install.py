"""Installs vit_jax's dependencies into a runtime that already has some (Colab), keeping what fits.

A plain `pip install vit_jax` on Colab would add `tensorflow-cpu` on top of Colab's
`tensorflow` (two distributions writing one `tensorflow/` package) and could move jax away
from the accelerator plugin Colab installed for it. Instead the notebooks run

  pip install --no-deps <vit_jax>
  python <site-packages>/vit_jax/runtime/colab_install.py

and this script installs only the requirements the runtime does not already satisfy:
- an installed `tensorflow` that fits the `tensorflow-cpu` range serves tf.data as it is;
  one that does not fit is upgraded as `tensorflow` (never a second TensorFlow next to it);
- jax and jaxlib stay when they fit; when they must move, the TPU (`libtpu`) or CUDA
  (`jax-cuda12-plugin`) plugin the runtime has moves with them, through jax's own extras.
It runs by path, before the package can be imported (its `__init__` needs these
dependencies), so it uses only the standard library and `packaging`.
"""

import importlib.metadata
import subprocess
import sys

from packaging.requirements import Requirement


def _installed_versions():
  versions = {}
  for dist in importlib.metadata.distributions():
    name = dist.metadata['Name']
    if name:
      versions[name.lower().replace('_', '-')] = dist.version
  return versions


def plan(requirements, installed):
  """The requirement strings pip must install; `installed` maps normalised names to versions."""
  base = [Requirement(r) for r in requirements]
  base = [r for r in base if r.marker is None or r.marker.evaluate({'extra': ''})]
  todo = []
  jax_moves = False
  for req in base:
    name = req.name.lower().replace('_', '-')
    if name == 'tensorflow-cpu' and 'tensorflow' in installed:
      name = 'tensorflow'  # Colab's TensorFlow provides tf.data; upgrade it, never add another
      req = Requirement(f'tensorflow{req.specifier}')
    have = installed.get(name)
    if have is not None and req.specifier.contains(have, prereleases=True):
      continue
    jax_moves |= name in ('jax', 'jaxlib')
    todo.append(str(req))
  if jax_moves:
    jax = next(r for r in base if r.name == 'jax')
    plugins = [
        extra
        for extra, dist in (('tpu', 'libtpu'), ('cuda12', 'jax-cuda12-plugin'))
        if dist in installed
    ]
    if plugins:
      todo = [r for r in todo if Requirement(r).name != 'jax']
      todo.append(f'jax[{",".join(plugins)}]{jax.specifier}')
  return todo


def main(argv):
  requirements = importlib.metadata.requires('vit_jax') or []
  todo = plan(requirements, _installed_versions())
  print('vit_jax needs:', ' '.join(todo) if todo else 'nothing more (all present)')
  if todo and '--dry-run' not in argv:
    subprocess.run([sys.executable, '-m', 'pip', 'install', '-q', *todo], check=True)


if __name__ == '__main__':
  main(sys.argv[1:])
