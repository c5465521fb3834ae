"""`compare` and `ab`: regression verdicts between runs (the logic lives in harness.regress)."""

from __future__ import annotations


def compare(argv: list[str]) -> int:
    from harness.regress.ab import compare_main

    return compare_main(argv)


def ab(argv: list[str]) -> int:
    from harness.regress.ab import ab_main

    return ab_main(argv)
