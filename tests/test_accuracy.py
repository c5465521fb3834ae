"""Tests of harness.measure.accuracy: exact row reference, uniform floor, metrics, leak checks."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from harness.measure import accuracy
from harness.measure.accuracy import (
    AccuracyResult,
    accuracy_metrics,
    batch_change,
    causality_change,
    is_finite,
    reference_rows,
    rows_per_block,
    sample_rows,
    skill_score,
    uniform_rows,
)


def qkv(b: int, h: int, n: int, d: int, seed: int = 0, dtype: torch.dtype = torch.float32):
    gen = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(b, h, n, d, generator=gen).to(dtype) for _ in range(3))


def full_attention(q: Tensor, k: Tensor, v: Tensor, causal: bool) -> Tensor:
    """torch's own SDPA (math path on CPU) in fp64."""
    return F.scaled_dot_product_attention(q.double(), k.double(), v.double(), is_causal=causal)


def full_uniform(v: Tensor, causal: bool) -> Tensor:
    """Mean of visible v, written directly: (B, H, N, d) in fp64."""
    n = v.shape[2]
    v = v.double()
    if not causal:
        return v.mean(2, keepdim=True).expand_as(v)
    return torch.stack([v[:, :, : i + 1].mean(2) for i in range(n)], dim=2)


# ----- sample_rows ------------------------------------------------------------------------
@pytest.mark.parametrize("n,rows", [(1, 1), (2, 1), (63, 10), (63, 63), (63, 200), (1000, 256), (1000, 2)])
def test_sample_rows_sorted_unique(n: int, rows: int) -> None:
    idx = sample_rows(n, rows, seed=3, device="cpu")
    assert idx.dtype == torch.int64
    assert torch.equal(idx, idx.unique(sorted=True))
    assert 0 <= int(idx[0]) and int(idx[-1]) < n
    assert idx.numel() == min(n, rows)
    if rows >= n:
        assert torch.equal(idx, torch.arange(n))


def test_sample_rows_seeded() -> None:
    assert torch.equal(sample_rows(1000, 50, 7), sample_rows(1000, 50, 7))
    assert not torch.equal(sample_rows(1000, 50, 7), sample_rows(1000, 50, 8))


def test_sample_rows_rejects_empty() -> None:
    with pytest.raises(ValueError):
        sample_rows(10, 0, 0)


# ----- reference and uniform floor ----------------------------------------------------------
@pytest.mark.parametrize("n", [63, 1000])
@pytest.mark.parametrize("causal", [False, True])
def test_reference_rows_match_sdpa(n: int, causal: bool) -> None:
    q, k, v = qkv(2, 2, n, 48)
    full = full_attention(q, k, v, causal)
    idx = sample_rows(n, 37, seed=1)
    ref = reference_rows(q, k, v, idx, causal)
    assert ref.shape == (2, 2, idx.numel(), 48) and ref.dtype == torch.float64
    torch.testing.assert_close(ref, full[:, :, idx], rtol=1e-10, atol=1e-10)
    all_rows = reference_rows(q, k, v, sample_rows(n, n + 5, seed=1), causal)
    torch.testing.assert_close(all_rows, full, rtol=1e-10, atol=1e-10)


def test_reference_rows_blocked_equals_unblocked(monkeypatch: pytest.MonkeyPatch) -> None:
    q, k, v = qkv(1, 2, 63, 16)
    idx = sample_rows(63, 40, seed=0)
    whole = reference_rows(q, k, v, idx, causal=True)
    monkeypatch.setattr(accuracy, "BLOCK_BYTES", 2 * 63 * 8 * 3)  # 3 rows per block
    assert rows_per_block(2, 63, 8, accuracy.BLOCK_BYTES) == 3
    torch.testing.assert_close(reference_rows(q, k, v, idx, causal=True), whole, rtol=0, atol=1e-14)


def test_reference_rows_upcasts_low_precision() -> None:
    q, k, v = qkv(1, 1, 63, 32, dtype=torch.bfloat16)
    ref = reference_rows(q, k, v, torch.arange(63), causal=False)
    assert ref.dtype == torch.float64
    torch.testing.assert_close(ref, full_attention(q, k, v, False), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("n", [63, 1000])
@pytest.mark.parametrize("causal", [False, True])
def test_uniform_rows_match_direct_mean(n: int, causal: bool) -> None:
    _, _, v = qkv(2, 3, n, 8)
    idx = sample_rows(n, 50, seed=2)
    torch.testing.assert_close(uniform_rows(v, idx, causal), full_uniform(v, causal)[:, :, idx])


def test_uniform_equals_attention_with_constant_keys() -> None:
    q, _, v = qkv(1, 2, 63, 8)
    k = torch.ones_like(q)
    idx = torch.arange(63)
    for causal in (False, True):
        torch.testing.assert_close(uniform_rows(v, idx, causal), reference_rows(q, k, v, idx, causal))


# ----- metrics ------------------------------------------------------------------------------
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("out_dtype", [torch.float64, torch.float32])
def test_exact_output_scores_perfectly(causal: bool, out_dtype: torch.dtype) -> None:
    q, k, v = qkv(2, 2, 1000, 48)
    out = full_attention(q, k, v, causal).to(out_dtype)
    res = accuracy_metrics(q, k, v, out, causal, rows=128, seed=0)
    assert isinstance(res, AccuracyResult) and res.rows == 128
    assert res.rel_err < 1e-6 and res.max_abs_err < 1e-5
    assert res.cos_sim == pytest.approx(1.0, abs=1e-6)
    assert res.uniform_rel_err > 0.1
    assert res.skill == pytest.approx(1.0, abs=1e-5)


@pytest.mark.parametrize("causal", [False, True])
def test_uniform_output_has_zero_skill(causal: bool) -> None:
    q, k, v = qkv(2, 2, 63, 48)
    res = accuracy_metrics(q, k, v, full_uniform(v, causal), causal, rows=20, seed=0)
    assert res.rel_err == pytest.approx(res.uniform_rel_err, rel=1e-9)
    assert abs(res.skill) < 1e-9


def test_worse_than_uniform_has_negative_skill() -> None:
    q, k, v = qkv(1, 2, 63, 16)
    res = accuracy_metrics(q, k, v, -full_attention(q, k, v, False), False, rows=63, seed=0)
    assert res.skill < 0 and res.cos_sim == pytest.approx(-1.0)
    assert res.rel_err == pytest.approx(2.0)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_output_gives_nan(bad: float) -> None:
    q, k, v = qkv(1, 2, 63, 16)
    out = full_attention(q, k, v, False).float()
    assert is_finite(out)
    out[0, 1, 5, 3] = bad
    assert not is_finite(out)
    res = accuracy_metrics(q, k, v, out, False, rows=8, seed=0)  # the bad row need not be sampled
    assert math.isnan(res.rel_err) and math.isnan(res.skill) and math.isnan(res.cos_sim)
    assert res.uniform_rel_err > 0


@pytest.mark.parametrize(
    "rel,uni,expected",
    [(0.1, 0.5, 0.8), (0.0, 0.0, 1.0), (0.1, 0.0, math.nan), (math.nan, 0.5, math.nan)],
)
def test_skill_score(rel: float, uni: float, expected: float) -> None:
    got = skill_score(rel, uni)
    assert (math.isnan(got) and math.isnan(expected)) or got == pytest.approx(expected)


# ----- causality and batch independence -----------------------------------------------------
def causal_attention(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    return F.scaled_dot_product_attention(q, k, v, is_causal=True)


def leaky_mean_v(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    return causal_attention(q, k, v) + v.mean(dim=2, keepdim=True)


def leaky_query_norm(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    """Normalizes queries by statistics pooled over the whole sequence (future queries leak)."""
    return causal_attention(q / q.pow(2).mean(dim=2, keepdim=True).sqrt(), k, v)


def batch_mixing(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    """Normalizes queries over the batch (other batch elements leak into each output)."""
    q = (q - q.mean(0)) / q.std(0)
    return F.scaled_dot_product_attention(q, k, v)


@pytest.mark.parametrize("n", [2, 63, 1000])
def test_causality_change_of_correct_attention_is_tiny(n: int) -> None:
    q, k, v = qkv(2, 2, n, 48)
    assert causality_change(causal_attention, q, k, v) < 1e-6


@pytest.mark.parametrize(
    "leaky,n",  # row 0 ignores q, so a query leak needs N > 2 to show
    [
        (leaky_mean_v, 2),
        (leaky_mean_v, 63),
        (leaky_mean_v, 1000),
        (leaky_query_norm, 63),
        (leaky_query_norm, 1000),
    ],
)
def test_causality_change_of_leaky_function_is_large(leaky, n: int) -> None:
    q, k, v = qkv(2, 2, n, 48)
    assert causality_change(leaky, q, k, v, seed=1) > 1e-2


def test_causality_change_low_precision_and_trivial_length() -> None:
    q, k, v = qkv(1, 2, 63, 16, dtype=torch.bfloat16)
    assert causality_change(causal_attention, q, k, v) < 1e-6
    assert causality_change(leaky_mean_v, q, k, v) > 1e-2
    assert causality_change(leaky_mean_v, *qkv(1, 2, 1, 16)) == 0.0


def test_causality_change_does_not_touch_inputs() -> None:
    q, k, v = qkv(1, 2, 63, 16)
    copies = [x.clone() for x in (q, k, v)]
    causality_change(leaky_mean_v, q, k, v)
    for x, c in zip((q, k, v), copies, strict=True):
        assert torch.equal(x, c)


def test_batch_change() -> None:
    q, k, v = qkv(3, 2, 63, 16)
    assert batch_change(batch_mixing, q, k, v) > 1e-2
    assert batch_change(causal_attention, q, k, v) < 1e-6
    assert batch_change(batch_mixing, *qkv(1, 2, 63, 16)) is None


# ----- key padding masks ----------------------------------------------------------------------
@pytest.mark.parametrize("causal", [False, True])
def test_masked_reference_ignores_padded_keys_and_rows(causal: bool) -> None:
    """Right padding: the metrics equal those of the real tokens alone; padded rows never count."""
    q, k, v = qkv(2, 2, 63, 16, seed=4)
    mask = torch.ones(2, 63, dtype=torch.bool)
    mask[0, 40:] = False  # element 0 has 40 real tokens, element 1 all 63
    keep = mask[:, None, None, :] & (torch.ones(63, 63).tril().bool() if causal else True)
    exact = F.scaled_dot_product_attention(q.double(), k.double(), v.double(), attn_mask=keep)
    garbage = exact.clone()
    garbage[0, :, 40:] = float("nan")  # outputs of padded queries are unspecified
    res = accuracy_metrics(q, k, v, garbage, causal, rows=63, seed=0, key_padding_mask=mask)
    assert res.rel_err < 1e-12 and res.skill == pytest.approx(1.0)
    # the floor over real rows only = the floor of element 0 truncated and element 1, pooled
    idx = torch.arange(63)
    ref0 = full_attention(q[:1, :, :40], k[:1, :, :40], v[:1, :, :40], causal)
    ref1 = full_attention(q[1:], k[1:], v[1:], causal)
    uni0, uni1 = uniform_rows(v[:1, :, :40], idx[:40], causal), uniform_rows(v[1:], idx, causal)
    num = (uni0 - ref0).pow(2).sum() + (uni1 - ref1).pow(2).sum()
    assert res.uniform_rel_err == pytest.approx(float((num / (ref0.pow(2).sum() + ref1.pow(2).sum())).sqrt()))
    unmasked = accuracy_metrics(q, k, v, exact, causal, rows=63, seed=0)
    assert unmasked.rel_err > 1e-3  # without the mask the same output is wrong: the test can fail
