"""The base class of every error that means bad input from the user (exit 2, one line)."""


class UserError(Exception):
    """Bad input from the user: the CLI prints str(err) as one line and exits 2."""
