"""Error types for problems the user can fix: a bad config value, bad data, a missing file.

`python -m vit_jax.main` prints these as one line `error: <message>` and exits with status 2
(no traceback); any other exception is a bug and keeps its traceback. Both are ValueErrors,
so code and tests catching ValueError (or FileNotFoundError) keep working.
"""


class UserInputError(ValueError):
  """A bad config value, bad or unprepared data, or a file with bad contents."""


class MissingInputError(UserInputError, FileNotFoundError):
  """A file or folder the config names does not exist."""
