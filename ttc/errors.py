"""Errors a user can cause; the driver prints them as one line and exits non-zero."""


class UserError(Exception):
  """Bad input (config, path, data): the message names the problem and the fix."""
