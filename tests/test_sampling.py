"""tests/shapes.py `sample` and the `sampled` marker: the default run keeps every axis value, the
slow pass gets the rest, and the choice does not depend on collection order."""

from __future__ import annotations

import itertools
import random

import pytest

from tests.shapes import HEAD_DIMS, SEQ_LENS, sample


def product_cases(**axes: tuple) -> list[tuple[str, dict]]:
    names = list(axes)
    return [
        ("t[" + "-".join(map(str, values)) + "]", dict(zip(names, values, strict=True)))
        for values in itertools.product(*axes.values())
    ]


def test_sample_covers_every_value_within_the_budget() -> None:
    cases = product_cases(n=(1, 15, 16, 17, 63, 1000), d=HEAD_DIMS, causal=(False, True))
    kept = sample(cases, 8)
    assert len(kept) == 8 and kept <= {case_id for case_id, _ in cases}
    chosen = [params for case_id, params in cases if case_id in kept]
    for name in ("n", "d", "causal"):
        assert {p[name] for p in chosen} == {p[name] for _, p in cases}, name


def test_sample_exceeds_the_budget_only_to_cover_every_value() -> None:
    cases = product_cases(n=SEQ_LENS, d=HEAD_DIMS, tied=(True, False))
    assert len(sample(cases, 1)) == len(HEAD_DIMS)  # 4 head dims need 4 cases
    assert sample(cases, 100) == {case_id for case_id, _ in cases}


def test_sample_ignores_collection_order() -> None:
    cases = product_cases(n=SEQ_LENS, d=HEAD_DIMS, causal=(False, True))
    shuffled = cases[:]
    random.Random(3).shuffle(shuffled)
    assert sample(cases, 5) == sample(shuffled, 5)


@pytest.mark.sampled(3)
@pytest.mark.parametrize("d", HEAD_DIMS)
@pytest.mark.parametrize("n", SEQ_LENS)
def test_marker_keeps_a_sample_here(n: int, d: int, request: pytest.FixtureRequest) -> None:
    """The 4 cases that show each head dim run by default, the other 4 under `-m slow`."""
    slow = request.node.get_closest_marker("slow") is not None
    expression = request.config.getoption("markexpr") or ""
    if expression.startswith("not slow"):
        assert not slow
    elif expression == "slow":
        assert slow
