"""Bad input to a bench tool: one ``error:`` line on stderr and exit status 2, as in the product's CLI."""

import functools
import sys

from recbole_mind.errors import UserError


def user_errors_exit_2(main):
    """``main`` with a UserError printed as one ``error:`` line and exit status 2."""
    @functools.wraps(main)
    def guarded(*args, **kwargs):
        try:
            return main(*args, **kwargs)
        except UserError as error:
            print(f"error: {error}", file=sys.stderr)
            sys.exit(2)
    return guarded
