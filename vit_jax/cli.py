"""The command-line boundary of main, inference, aot and export: one line for every mistake.

`run(main)` is absl's `app.run` with its errors made one line, `error: <what, the value and
the fix>`, and exit status 2:
- the flags: a missing config file, an unknown recipe, model or dataset in the config string,
  an unknown `--config.<field>` (naming the closest field and the valid ones), a value that
  does not parse, a missing required flag;
- errors.UserInputError raised by `main` (with its notes, e.g. which step is saved), and
  app.UsageError.
Any other exception is a bug and keeps its traceback.

A command that ends, by returning or by `sys.exit(status)`, runs the atexit handlers and exits
without the interpreter's teardown (`exit_now`): unloading TensorFlow's and JAX's modules
took about 1.4 s after every command on a 2-core host, with all work already written.
"""

import atexit
import difflib
import os
import re
import sys

from absl import app
from absl import flags
from ml_collections.config_flags import config_flags

from vit_jax import errors
from vit_jax import paths

FLAGS = flags.FLAGS


def exit_now(status):
  """Exits with `status` (an int, None for 0, or a message for 1, as sys.exit takes them)
  after the atexit handlers (jax.distributed's shutdown, logging's flush, our own) and with
  stdout and stderr flushed; the interpreter's teardown of loaded modules is skipped."""
  if status is not None and not isinstance(status, int):
    print(status, file=sys.stderr)
    status = 1
  atexit._run_exitfuncs()  # CPython's own exit path; there is no public name for it
  for stream in (sys.stdout, sys.stderr):
    try:
      stream.flush()
    except (OSError, ValueError):  # a closed pipe: nothing more can be written anyway
      pass
  os._exit(status or 0)


def _fail(message):
  sys.stdout.flush()
  print(errors.one_line(message), file=sys.stderr, flush=True)
  exit_now(2)


def _config_flag_names():
  return [
      name
      for name, flag in FLAGS._flags().items()
      if isinstance(flag.parser, config_flags.ConfigFileFlagParser) and '.' not in name
  ]


def _value_in(argv, name):
  """The value of `--name=V` / `--name V` in argv (the last one), or None."""
  value = None
  for i, arg in enumerate(argv):
    match = re.fullmatch(rf'--?{re.escape(name)}(=(.*))?', arg)
    if match:
      value = match.group(2) if match.group(1) else (argv[i + 1] if i + 1 < len(argv) else '')
  return value


def _closest(value, choices, cutoff=0.6):
  close = difflib.get_close_matches(value, choices, n=1, cutoff=cutoff)
  return f"did you mean '{close[0]}'? " if close else ''


def _missing_config_file(name, path):
  folder = os.path.dirname(path) or '.'
  here = []
  if paths.exists(folder) and paths.isdir(folder):
    here = [n for n in paths.listdir(folder) if n.endswith('.py') and not n.startswith('_')]
  hint = _closest(os.path.basename(path), here, cutoff=0.75)
  installed = os.path.dirname(os.path.abspath(__file__)) + '/configs'
  return (
      f'--{name}={path}: there is no such config file (relative paths start at '
      f'{os.getcwd()}); {hint}the recipes are configs/vit.py, pit.py, augreg.py and mae.py '
      f'in a checkout, or under {installed}.'
  )


def _unknown_override(name, config, argv):
  """A sentence for the first `--name.<field>` that is not a field of `config`, or None."""
  for arg in argv:
    match = re.match(rf'--?(no)?{re.escape(name)}\.([^=]+)', arg)
    if not match:
      continue
    node, walked = config, []
    for part in match.group(2).split('.'):
      keys = list(node.keys()) if hasattr(node, 'keys') else []
      if part not in keys:
        where = f'{name}.' + '.'.join(walked) if walked else name
        return (
            f'--{name}.{match.group(2)}: {where} has no field {part!r}; '
            f'{_closest(part, keys)}its fields are {sorted(keys)}.'
        )
      node, walked = node[part], walked + [part]
  return None


def _explain_config(name, argv):
  """Why the config flag `name` did not parse, or None when it did."""
  value = _value_in(argv, name)
  if not value:
    return None
  path, _, _ = value.partition(':')
  if not paths.exists(path):
    return _missing_config_file(name, path)
  try:
    config = FLAGS[name].parser.parse(value)
  except (ValueError, TypeError, KeyError) as e:
    cause = e.__context__ or e  # config_flags re-raises with the traceback as text
    return f'--{name}={value}: {cause}'
  failed = getattr(config, '_error', None)  # config_flags' stand-in for a file that failed
  if failed is not None:
    return f'--{name}={value}: the config file cannot be loaded ({failed})'
  return _unknown_override(name, config, argv)


_CONFIG_ERRORS = (flags.Error, OSError, ValueError, TypeError, KeyError, AttributeError)


def parse_flags(argv):
  """absl's flag parsing (an app.run `flags_parser`), with its errors as one line."""
  try:
    rest = FLAGS(argv)
    for name in _config_flag_names():
      if FLAGS[name].value is not None:
        FLAGS[name].value.keys()  # a config file that did not load raises here
    return rest
  except _CONFIG_ERRORS as e:
    for name in _config_flag_names():
      explained = _explain_config(name, argv)
      if explained:
        _fail(explained)
    if not isinstance(e, flags.Error):
      raise
    _fail(str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__)


def run(main):
  """app.run(main) with one-line errors (see the module docstring)."""

  def checked(argv):
    try:
      status = main(argv)
    except app.UsageError as e:
      _fail(f'{e} (--help lists the flags)')
    except errors.UserInputError as e:
      _fail(e)
    except SystemExit as e:
      status = e.code
    exit_now(status)

  app.run(checked, flags_parser=parse_flags)
