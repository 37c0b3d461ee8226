"""The notebooks' install step keeps a runtime's jax, jaxlib and TensorFlow where they fit."""

import importlib.metadata
import pathlib
import subprocess
import sys

from packaging.requirements import Requirement

from vit_jax.runtime import colab_install

SCRIPT = pathlib.Path(colab_install.__file__)
REQUIRES = importlib.metadata.requires('vit_jax')


def _pins():
  """{name: lowest allowed version} of vit_jax's own requirements (from its metadata)."""
  pins = {}
  for text in REQUIRES:
    req = Requirement(text)
    lows = [s.version for s in req.specifier if s.operator == '>=']
    if not req.marker and lows:
      pins[req.name.lower().replace('_', '-')] = lows[0]
  return pins


def _colab(**changes):
  """A runtime that has every requirement at its lowest version, Colab's way, then `changes`."""
  installed = _pins()
  installed['tensorflow'] = installed.pop('tensorflow-cpu')  # Colab ships full TensorFlow
  installed.update(changes)
  return {k: v for k, v in installed.items() if v is not None}


def test_this_environment_needs_nothing():
  done = subprocess.run(
      [sys.executable, str(SCRIPT), '--dry-run'], capture_output=True, text=True, check=True
  )
  assert done.stdout.strip() == 'vit_jax needs: nothing more (all present)'


def test_colab_tensorflow_that_fits_is_kept_and_no_second_one_added():
  assert colab_install.plan(REQUIRES, _colab()) == []


def test_old_colab_tensorflow_is_upgraded_under_its_own_name():
  todo = colab_install.plan(REQUIRES, _colab(tensorflow='2.15.0'))
  assert len(todo) == 1 and Requirement(todo[0]).name == 'tensorflow'
  tf_cpu = next(Requirement(r) for r in REQUIRES if r.startswith('tensorflow-cpu'))
  assert Requirement(todo[0]).specifier == tf_cpu.specifier


def test_missing_packages_are_installed_and_tensorflow_cpu_without_tensorflow():
  todo = colab_install.plan(REQUIRES, _colab(tensorflow=None, **{'ml-collections': None}))
  assert sorted(Requirement(r).name for r in todo) == ['ml-collections', 'tensorflow-cpu']


def test_jax_that_must_move_takes_the_runtimes_accelerator_plugin_along():
  todo = colab_install.plan(REQUIRES, _colab(jax='0.4.30', jaxlib='0.4.30', libtpu='0.0.1'))
  names = {Requirement(r).name: Requirement(r) for r in todo}
  assert set(names) == {'jax', 'jaxlib'} and names['jax'].extras == {'tpu'}
  todo = colab_install.plan(
      REQUIRES, _colab(jax='0.4.30', jaxlib='0.4.30', **{'jax-cuda12-plugin': '0.4.30'})
  )
  assert {Requirement(r).name: Requirement(r).extras for r in todo}['jax'] == {'cuda12'}
  assert colab_install.plan(REQUIRES, _colab(libtpu='0.0.1')) == []  # jax fits: untouched
