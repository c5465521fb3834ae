"""The row sample of the exact reference is unbiased: sampled estimates agree with all rows.

The first version forced row 0 into a uniform sample; row 0 is exact for every method and its
norm dominates causal denominators, so causal errors and the uniform floor came out 1.5-2.7x too
low. These tests compare the sampled estimate with the all-rows value of the same quantity.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from harness.measure.accuracy import accuracy_metrics, uniform_rows
from harness.measure.rowsample import row_weights, sample_rows, strata

ROWS = 256


def _elu_linear_attention(q: Tensor, k: Tensor, v: Tensor, causal: bool) -> Tensor:
    """elu+1 linear attention in fp64, (B, H, N, d): a realistic approximation with large error."""
    fq, fk, v = (F.elu(x.double()) + 1 for x in (q, k)), None, v.double()
    fq, fk = list(fq)
    if not causal:
        kv, z = fk.transpose(-1, -2) @ v, fk.sum(2, keepdim=True)  # (B, H, d, d), (B, H, 1, d)
        return (fq @ kv) / (fq * z).sum(-1, keepdim=True)
    kv = torch.einsum("bhnd,bhne->bhnde", fk, v).cumsum(2)  # (B, H, N, d, d)
    z = fk.cumsum(2)
    return torch.einsum("bhnd,bhnde->bhne", fq, kv) / (fq * z).sum(-1, keepdim=True)


def _all_rows_rel_err(out: Tensor, ref: Tensor) -> float:
    return float((out - ref).norm() / ref.norm())


@pytest.mark.parametrize("n,rows", [(2048, 256), (8192, 256), (1000, 37), (63, 10), (131072, 5), (100, 99)])
def test_design_covers_every_row_once_and_weights_sum_to_n(n: int, rows: int) -> None:
    design = strata(n, rows)
    assert design[0][0] == 0 and design[-1][1] == n
    assert all(a[1] == b[0] for a, b in zip(design, design[1:], strict=False))
    assert all(0 < take <= hi - lo for lo, hi, take in design)
    idx = sample_rows(n, rows, seed=5)
    assert idx.numel() == min(n, rows)
    assert float(row_weights(idx, n, rows).sum()) == pytest.approx(n)


def test_weighted_sum_is_unbiased_over_seeds() -> None:
    """The mean over many seeds of sum_i w_i x_i equals sum_i x_i (x_i = 1 / (i + 1), causal-like)."""
    n, rows = 4096, 64
    x = 1.0 / torch.arange(1, n + 1, dtype=torch.float64)
    estimates = []
    for seed in range(200):
        idx = sample_rows(n, rows, seed)
        estimates.append(float((x[idx] * row_weights(idx, n, rows)).sum()))
    mean = sum(estimates) / len(estimates)
    sem = math.sqrt(sum((e - mean) ** 2 for e in estimates) / (len(estimates) - 1) / len(estimates))
    assert abs(mean - float(x.sum())) < 4 * sem + 1e-12


@pytest.mark.parametrize("causal", [False, True], ids=["noncausal", "causal"])
@pytest.mark.parametrize("n", [2048, 8192])
def test_sampled_error_and_floor_match_all_rows(n: int, causal: bool) -> None:
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 2, n, 16, generator=gen) for _ in range(3))
    ref = F.scaled_dot_product_attention(q.double(), k.double(), v.double(), is_causal=causal)
    out = _elu_linear_attention(q, k, v, causal)
    res = accuracy_metrics(q, k, v, out, causal, rows=ROWS, seed=0)
    every = torch.arange(n)
    true_err = _all_rows_rel_err(out, ref)
    true_floor = _all_rows_rel_err(uniform_rows(v, every, causal), ref)
    assert res.rel_err == pytest.approx(true_err, rel=0.05)
    assert res.uniform_rel_err == pytest.approx(true_floor, rel=0.05)
    assert res.skill == pytest.approx(1 - true_err / true_floor, abs=0.05)
