"""Field-level config checks, each one `errors.UserInputError` naming the field, the value and
the fix: types, bounds and choices from the one schema (configs/schema.py), (low, high)
ranges, and the keys of a module's config. vit_jax/config_checks.py builds the checks that
relate fields, models and meshes on these.
"""

import difflib
import math
import numbers

from vit_jax import errors
from vit_jax.configs import schema

DTYPE_ALIASES = {
    'bf16': 'bfloat16',
    'fp16': 'float16',
    'f16': 'float16',
    'half': 'float16',
    'fp32': 'float32',
    'f32': 'float32',
    'float': 'float32',
}

KINDS = {kind: schema.KINDS[kind] for kind in ('int', 'number', 'bool')}


def error(field, value, requirement):
  return errors.UserInputError(f'config.{field}={value!r} {requirement}')


def check_type(field, value, kind):
  """The value has the type `kind` names (bool is not a number; None is not allowed)."""
  is_bool = isinstance(value, bool)
  ok = {
      'int': isinstance(value, numbers.Integral) and not is_bool,
      'number': isinstance(value, numbers.Real) and not is_bool,
      'bool': is_bool,
  }[kind]
  if not ok:
    name, example = KINDS[kind]
    raise error(
        field,
        value,
        f'has type {type(value).__name__}; it must be {name}, e.g. ' f'--config.{field}={example}',
    )


def check_bounds(field, value):
  """`value` within the schema's bounds of `field` (a checked number)."""
  why = field.why or field.doc
  if field.high is not None:
    low_ok = value > field.low if field.low_open else value >= field.low
    high_ok = value < field.high if field.high_open else value <= field.high
    if not (low_ok and high_ok):
      interval = (
          f"{'(' if field.low_open else '['}{field.low}, {field.high}"
          f"{')' if field.high_open else ']'}"
      )
      raise error(field.name, value, f'must be in {interval} ({why})')
  elif field.low is not None:
    if field.low_open and not value > field.low:
      raise error(field.name, value, f'must be a finite number > {field.low} ({why})')
    if not field.low_open and value < field.low:
      raise error(
          field.name, value, f'must be >= {field.low} ({why}); set it to ' f'{field.low} or more'
      )


def check_schema_fields(config):
  """Every field of the schema: its type, then its bounds or choices."""
  for field in schema.FIELDS:
    try:
      value = schema.get(config, field.name)
    except (KeyError, AttributeError):
      raise errors.UserInputError(
          f'config.{field.name} is missing; build configs on vit_jax.configs.common.get_config(),'
          f' which sets it to {field.default!r}'
      ) from None
    if value is None and field.optional:
      continue
    if field.kind == 'choice':
      check_choice(
          field.name,
          value,
          field.choices,
          DTYPE_ALIASES if field.choices == schema.DTYPES else None,
      )
      continue
    if field.kind == 'range':
      check_range(field, value)
      continue
    if field.kind not in KINDS:  # str and dict fields are checked where they are used
      continue
    check_type(field.name, value, field.kind)
    if field.kind == 'number' and not math.isfinite(value):
      raise error(field.name, value, 'is not finite; set a finite number')
    check_bounds(field, value)


def check_range(field, value):
  """A pair (low, high) of finite numbers, low <= high, both within the field's bounds."""
  pair = tuple(value) if isinstance(value, (tuple, list)) else ()
  real = lambda v: isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v)
  if len(pair) == 2 and all(map(real, pair)) and pair[0] <= pair[1]:
    try:
      for v in pair:
        check_bounds(field, v)
      return
    except errors.UserInputError:
      pass
  name, example = schema.KINDS['range']
  raise error(
      field.name,
      value,
      f'must be {name}, both {schema.bounds(field)} ({field.why or field.doc}), e.g. '
      f'--config.{field.name}={example}',
  )


def check_choice(field, value, choices, aliases=None):
  same_type = isinstance(value, type(choices[0])) and not isinstance(value, bool)
  if same_type and value in choices:
    return
  hint = ''
  if isinstance(value, str) and all(isinstance(c, str) for c in choices):
    close = (aliases or {}).get(value.lower()) or next(
        iter(difflib.get_close_matches(value, choices, n=1, cutoff=0.5)), None
    )
    hint = f"; did you mean '{close}'?" if close else ''
  raise error(field, value, f'is not one of {choices}{hint}')


def check_fields(field, node, allowed, set_elsewhere):
  """Every key of `node` is a keyword of the module it configures: a typo is an error."""
  for key in node:
    if key in set_elsewhere:
      raise errors.UserInputError(
          f'config.{field}.{key} is set by {set_elsewhere[key]}; ' f'remove config.{field}.{key}.'
      )
    if key not in allowed:
      close = difflib.get_close_matches(key, allowed, n=1, cutoff=0.6)
      hint = f"did you mean '{close[0]}'? " if close else ''
      raise errors.UserInputError(
          f'config.{field}.{key} is not a field of the model; {hint}' f'the fields are {allowed}.'
      )
