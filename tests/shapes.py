"""Axes shared by the variant tests, and the sampling that keeps the default run cheap.

A test over a product of axes (lengths x head dims x causal ...) marked `@pytest.mark.sampled(N)`
runs at most N of its cases in the default `pytest` (every value of every axis at least once, the
rest spread deterministically over the product, as xformers' `max_shapes_per_op`); the others
carry `slow`, so `pytest -m slow` runs the remainder and the two passes together run the full
product. `sample` does the choosing; tests/conftest.py applies it at collection.
"""

from __future__ import annotations

import zlib
from collections.abc import Hashable, Mapping, Sequence

HEAD_DIMS = (32, 48, 64, 128)  # the head dims every variant test covers (48: not a power of two)
SEQ_LENS = (63, 1000)  # an odd short length and a long odd one (partial last chunk at 128)


def _key(value: object) -> Hashable:
    return value if isinstance(value, (int, float, str, bool, type(None))) else repr(value)


def sample(cases: Sequence[tuple[str, Mapping[str, object]]], max_cases: int) -> set[str]:
    """The ids of the cases (id, {argname: value}) the default run keeps.

    Greedy cover: first cases that add an (argname, value) pair not seen yet, most new pairs first,
    so every value of every axis appears once (more than `max_cases` if that needs more); then
    fill up to `max_cases` in a fixed order (a hash of the id: spread over the product, the same on
    every run and machine, whatever order the cases were collected in).
    """
    order = sorted(cases, key=lambda case: (zlib.crc32(case[0].encode()), case[0]))
    pairs = {case_id: {(name, _key(value)) for name, value in params.items()} for case_id, params in order}
    uncovered = set().union(*pairs.values()) if pairs else set()
    kept: list[str] = []
    while uncovered:
        best = max(
            (case_id for case_id, _ in order if case_id not in kept),
            key=lambda case_id: len(pairs[case_id] & uncovered),
        )  # max keeps the first of equals: the hash order breaks ties
        kept.append(best)
        uncovered -= pairs[best]
    for case_id, _ in order:
        if len(kept) >= max_cases:
            break
        if case_id not in kept:
            kept.append(case_id)
    return set(kept)


def random_qkv(n: int, d: int, b: int = 1, h: int = 2, dtype: object = None, seed: int = 0) -> list:
    """q, k, v, each (b, h, n, d), standard normal from a seeded generator (dtype default float64)."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    dtype = torch.float64 if dtype is None else dtype
    return [torch.randn(b, h, n, d, generator=gen, dtype=dtype) for _ in range(3)]
