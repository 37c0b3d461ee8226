"""`Field`: how the config schema (configs/schema.py) declares one field, and the kinds it knows."""

import dataclasses
from typing import Any

# How a kind is named in errors, with a value to show in the fix.
KINDS = {
    'int': ('an integer', 1),
    'number': ('a number', 0.5),
    'bool': ('True or False', False),
    'str': ('a string', "'train'"),
    'range': ('a pair (low, high) with low <= high', '"(0.2,1.0)"'),
}


@dataclasses.dataclass(frozen=True)
class Field:
  """One config field. `low` / `high` bound a number (`low_open` / `high_open`: exclusive);
  `optional` admits None; `why` says in an error what a bound protects (defaults to `doc`)."""

  name: str
  default: Any
  # 'int', 'number', 'bool', 'str', 'choice', 'range' (a pair low <= high, both within the
  # bounds), 'dict' (free-form, e.g. the model)
  kind: str
  doc: str
  low: float | None = None
  high: float | None = None
  low_open: bool = False
  high_open: bool = False
  choices: tuple = ()
  optional: bool = False
  why: str = ''


DTYPES = ('float32', 'bfloat16', 'float16')
