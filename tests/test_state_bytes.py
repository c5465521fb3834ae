"""`AttentionVariant.state_bytes` of every variant on one problem: what a causal decoder keeps per
sequence after N tokens, all heads of one layer (MQAR's accuracy-vs-state chart plots it)."""

from __future__ import annotations

import pytest

from harness.plugins.contract import Problem
from harness.plugins.variants import VARIANTS

H, N, D = 4, 1000, 64
PROBLEM = Problem(batch=3, heads=H, seq_len=N, head_dim=D, dtype="bf16", causal=True)  # batch: not counted

# name -> (params, expected bytes)
EXPECTED = {
    "softmax": ({}, 2 * N * D * H * 2),  # K and V cache, bf16
    "flash": ({}, 2 * N * D * H * 2),
    "window": ({"window": 128}, 2 * 128 * D * H * 2),  # the last W tokens' K and V
    "linear": ({}, H * (D * D + D) * 4),  # fp32 S (D x d) and z (D), D = d
    "performer": ({"features": 256}, H * (256 * D + 256) * 4),
    "luna": ({"m": 8, "L": 8}, H * (64 * D + 64) * 4),  # D = m L
    "taylor": ({"proj_dim": 16}, H * (273 * D + 273) * 4),  # D = 1 + 16 + 256
    "luna_nested": ({"pack_len": 32}, H * 2 * 32 * D * 4),  # sum k A^T (d x l) and sum A v^T (l x d)
    "deltanet": ({}, H * D * D * 4),  # fp32 S (d x d), no normalizer
    "nystrom": ({}, None),  # no causal form
    "hedgehog": ({"window": 64}, H * ((128 * D + 128) * 4 + 2 * 64 * D * 2)),  # D = 2F, F = d; + window K, V
}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_state_bytes_formula(name: str) -> None:
    cls = VARIANTS.get(name)
    params, expected = EXPECTED[name]
    got = cls.state_bytes(PROBLEM, cls.make_params(params), cls.impls[0])
    assert got == expected, f"{name}: {got} != {expected}"


@pytest.mark.parametrize("name", VARIANTS.names())
def test_every_variant_reports_a_state_size(name: str) -> None:
    """Any registered variant: None (no causal form) or a positive size that does not shrink with N and
    does not depend on the batch."""
    cls = VARIANTS.get(name)
    params, impl = cls.make_params({}), cls.impls[0]
    sizes = [
        cls.state_bytes(Problem(b, H, n, D, causal=True), params, impl)
        for b, n in ((1, 64), (2, 64), (1, 4096))
    ]
    if sizes[0] is None:
        assert sizes == [None, None, None]
        return
    assert all(isinstance(x, float) and x > 0 for x in sizes) and sizes[0] == sizes[1] <= sizes[2]
