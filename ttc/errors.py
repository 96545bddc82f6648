"""Errors a user can cause; the driver prints them as one line and exits non-zero."""


class UserError(Exception):
  """Bad input (config, path, data): the message names the problem and the fix."""


def report(error: Exception) -> int:
  """Prints `error` as the one line a user sees (`error: ...`); returns exit status 2.

  Only the first line is kept: gin appends "In call to configurable ..." lines.
  """
  import sys
  print(f"error: {str(error).splitlines()[0]}", file=sys.stderr)
  return 2
