"""Did-you-mean for names the user typed (scenario keys, plugin names, subcommands)."""

from __future__ import annotations

import difflib


def suggest(name: str, choices: list[str]) -> str:
    """' (did you mean X?)' when a close match exists, else ''."""
    close = difflib.get_close_matches(name, choices, n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""
