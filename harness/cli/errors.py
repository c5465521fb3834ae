"""The one exception every subcommand raises for bad input from the user, and options shared by
subcommands."""

import argparse

from harness.common.errors import UserError


class UsageError(UserError):
    """Bad command-line usage: printed as one line, exit 2."""


MAX_CASES = 10_000  # = harness.config.bounds.MAX_CASES (not imported: the CLI starts without torch)


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive int, found {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive int, found {text!r}")
    return value


def max_cases_option(p: argparse.ArgumentParser) -> None:
    """`--max-cases N`: refuse a sweep of more cases (exit 2, naming the count)."""
    p.add_argument(
        "--max-cases",
        type=_positive,
        default=MAX_CASES,
        metavar="N",
        help=f"refuse a sweep of more than N cases, before listing them (default {MAX_CASES})",
    )
