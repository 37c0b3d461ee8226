"""gs:// paths need Google Cloud credentials: checked once, in seconds, before the first use.

Without credentials gcsfs and TensorFlow look for them, retry, and after a minute or more end
in tracebacks about DNS or metadata servers. `check` asks google.auth for the application
default credentials (GOOGLE_APPLICATION_CREDENTIALS, `gcloud auth application-default
login`, a Cloud VM's or TPU's service account) once per process, and turns their absence into
one line saying how to authenticate. With STORAGE_EMULATOR_HOST set (an emulator, as in the
tests) nothing is checked.
"""

import os

from vit_jax import errors

_found = False


def check(path):
  """UserInputError naming `path` when gs:// cannot be authenticated; else nothing."""
  global _found
  if _found or os.environ.get('STORAGE_EMULATOR_HOST'):
    return
  import google.auth
  from google.auth import exceptions

  try:
    google.auth.default()
  except exceptions.DefaultCredentialsError as e:
    reason = str(e).split(' To set up')[0].strip()
    raise errors.UserInputError(
        f'{path} is on Cloud Storage and no Google Cloud credentials were found ({reason}). '
        'Run `gcloud auth application-default login`, or set GOOGLE_APPLICATION_CREDENTIALS '
        'to a service-account key file (a Cloud VM or TPU uses its own service account); a '
        'public object is also readable at https://storage.googleapis.com/<bucket>/<object>.'
    ) from None
  _found = True


def _strings(tree, prefix=''):
  for key, value in tree.items():
    if isinstance(value, dict):
      yield from _strings(value, f'{prefix}{key}.')
    elif isinstance(value, str):
      yield prefix + key, value


def check_config(config):
  """`check` for every gs:// path among a config's fields (TensorFlow reads some itself)."""
  for field, value in _strings(config.to_dict()):
    if value.startswith('gs://'):
      check(f'config.{field}={value}')
