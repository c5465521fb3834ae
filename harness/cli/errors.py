"""The one exception every subcommand raises for bad input from the user."""


class UsageError(Exception):
    """Bad input from the user: printed as one line, exit 2."""
