"""Error types for problems the user can fix: a bad config value, bad data, a missing file.

The commands (main, inference, aot, export: vit_jax/cli.py) print these as one line
`error: <message> <notes>` and exit with status 2 (no traceback); any other exception is a bug
and keeps its traceback. Both are ValueErrors, so code and tests catching ValueError (or
FileNotFoundError) keep working.
"""

import sys


class UserInputError(ValueError):
  """A bad config value, bad or unprepared data, or a file with bad contents."""


class MissingInputError(UserInputError, FileNotFoundError):
  """A file or folder the config names does not exist."""


def one_line(error):
  """`error: <message> <notes>` on one line (the notes say e.g. which step is saved)."""
  text = ' '.join([str(error)] + list(getattr(error, '__notes__', ())))
  return 'error: ' + ' '.join(text.split())


def reporting_user_errors(main):
  """main(argv), with a UserInputError as one line `error: ...` on stderr and exit status 2.

  For absl `app.run` entry points; everything else (a bug) keeps its traceback.
  """

  def run(argv):
    try:
      return main(argv)
    except UserInputError as e:
      sys.stdout.flush()
      print(one_line(e), file=sys.stderr, flush=True)
      sys.exit(2)

  return run
