"""The one exception type the CLI turns into a single line and a non-zero exit."""


class UserError(Exception):
    """Bad input from the user: the message names the problem and the fix."""
