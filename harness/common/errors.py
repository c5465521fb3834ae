"""The one base class of bad input from the user.

Every stage raises a subclass of `UserError` for input the user can fix (a malformed scenario, an
unusable path, an unknown plugin name, a hand-edited record): the CLI catches `UserError`, prints
`str(err)` as one line and exits 2, never a traceback.
"""


class UserError(Exception):
    """Bad input from the user: the CLI prints str(err) as one line and exits 2."""
