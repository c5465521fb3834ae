"""`window` (sliding-window softmax): the block-banded fast path vs naive.py vs an fp64 band-mask
formula written here, its memory (no N x N tensor), the flash_attn wrapper's window, costs."""

from __future__ import annotations

import math
import sys
import types

import pytest
import torch
from torch import Tensor
from torch.utils.flop_counter import FlopCounterMode

from attentions.window import naive
from attentions.window.banded import window_attention_banded
from attentions.window.variant import WindowAttention, WindowParams, band_pairs
from harness.plugins import conformance as cf
from harness.plugins.contract import Problem
from tests.shapes import random_qkv


def qkv(n: int, d: int, b: int = 2, h: int = 2, **kw) -> list[Tensor]:
    return random_qkv(n, d, b, h, **kw)


def band_softmax64(q: Tensor, k: Tensor, v: Tensor, window: int, causal: bool) -> Tensor:
    """The definition, in fp64, row by row: softmax of q_i . k_j / sqrt(d) over the keys j of i's window."""
    q, k, v = (x.double() for x in (q, k, v))
    n, d = q.shape[-2:]
    out = torch.empty_like(v)
    for i in range(n):
        lo, hi = max(0, i - window + 1), (i + 1 if causal else min(n, i + window))
        w = torch.softmax(q[..., i, None, :] @ k[..., lo:hi, :].transpose(-1, -2) / math.sqrt(d), dim=-1)
        out[..., i, :] = (w @ v[..., lo:hi, :])[..., 0, :]
    return out


@pytest.mark.parametrize("causal", [False, True], ids=["noncausal", "causal"])
@pytest.mark.parametrize("n,window", [(1, 1), (17, 1), (63, 5), (63, 16), (130, 64), (100, 100), (63, 1000)])
def test_banded_and_naive_equal_the_band_formula(n: int, window: int, causal: bool) -> None:
    """fp64: the block-banded path and naive.py both equal the row-by-row band softmax."""
    q, k, v = qkv(n, 32)
    expected = band_softmax64(q, k, v, window, causal)
    assert cf.rel_err(window_attention_banded(q, k, v, window, causal), expected) < 1e-12
    assert cf.rel_err(naive.window_attention(q, k, v, window, causal), expected) < 1e-12


@pytest.mark.parametrize("causal", [False, True], ids=["noncausal", "causal"])
def test_gradients_match_naive(causal: bool) -> None:
    """fp64 gradients of q, k, v: banded vs naive.py, N = 1000 with W = 48 (partial last block)."""
    q, k, v = (x.requires_grad_() for x in qkv(1000, 48, b=1, h=1))
    w = torch.randn(1, 1, 1000, 48, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    fast = torch.autograd.grad((window_attention_banded(q, k, v, 48, causal) * w).sum(), (q, k, v))
    ref = torch.autograd.grad((naive.window_attention(q, k, v, 48, causal) * w).sum(), (q, k, v))
    assert max(cf.rel_err(a, b) for a, b in zip(fast, ref, strict=True)) < 1e-12


@pytest.mark.parametrize("causal", [False, True], ids=["noncausal", "causal"])
def test_window_covering_the_sequence_is_full_softmax(causal: bool) -> None:
    q, k, v = qkv(63, 32)
    assert cf.rel_err(window_attention_banded(q, k, v, 63, causal), cf.exact_softmax(q, k, v, causal)) < 1e-12


@pytest.mark.parametrize("causal", [False, True], ids=["noncausal", "causal"])
def test_arbitrary_key_padding_mask(causal: bool) -> None:
    """Padding anywhere: equal to naive.py with the mask at real rows; padded tokens change nothing."""
    q, k, v = qkv(63, 32, b=2, h=1)
    mask = torch.rand(2, 63, generator=torch.Generator().manual_seed(3)) > 0.3
    mask[:, 0] = True
    real = mask[:, None, :, None]
    out = window_attention_banded(q, k, v, 8, causal, mask)
    assert torch.isfinite(out).all()
    assert cf.rel_err(out * real, naive.window_attention(q, k, v, 8, causal, mask) * real) < 1e-12
    moved = [torch.where(real, x, 7.0 * torch.randn_like(x)) for x in (q, k, v)]
    assert cf.rel_err(window_attention_banded(*moved, 8, causal, mask) * real, out * real) < 1e-12


@pytest.mark.parametrize("causal", [False, True], ids=["noncausal", "causal"])
def test_memory_is_linear_in_n(causal: bool) -> None:
    """No tensor saved for the backward (nor the output) holds N^2 / 8 elements: N = 2048, W = 32."""
    n, window = 2048, 32
    q, k, v = (x.requires_grad_() for x in qkv(n, 16, b=1, h=1, dtype=torch.float32))
    sizes: list[int] = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: sizes.append(t.numel()) or t, lambda t: t):
        out = window_attention_banded(q, k, v, window, causal)
    assert sizes and max(sizes) <= n * 3 * window * 16 and max(sizes) < n * n / 8
    out.sum().backward()


def test_flash_attn_wrapper_passes_the_window(monkeypatch: pytest.MonkeyPatch) -> None:
    """impl flash_attn calls flash_attn_func(q, k, v, causal, window_size=(W-1, 0 | W-1)) in (B, N, H, d);
    a stand-in module computing that window on CPU gives naive.py's result."""
    calls = []

    def flash_attn_func(q: Tensor, k: Tensor, v: Tensor, causal: bool, window_size: tuple) -> Tensor:
        calls.append((causal, window_size))
        left, right = window_size
        assert left + 1 == 9 and right == (0 if causal else left)
        t = [x.transpose(1, 2) for x in (q, k, v)]
        return naive.window_attention(*t, left + 1, causal).transpose(1, 2).to(q.dtype)

    monkeypatch.setitem(sys.modules, "flash_attn", types.SimpleNamespace(flash_attn_func=flash_attn_func))
    var = WindowAttention(WindowParams(window=9), "flash_attn", 2, 32)
    q, k, v = qkv(40, 32, dtype=torch.float32)
    for causal in (False, True):
        out = cf.call(var, q, k, v, causal)
        assert cf.rel_err(out, naive.window_attention(q, k, v, 9, causal)) < 1e-6
    assert [c[0] for c in calls] == [False, True]
    with pytest.raises(ValueError, match="mask"):
        var(q, k, v, False, key_padding_mask=torch.ones(2, 40, dtype=torch.bool))


def test_flash_attn_is_declined_on_cpu_and_fp32() -> None:
    reasons = WindowAttention.not_supported_reasons(Problem(1, 1, 64, 64), WindowParams(), "flash_attn")
    text = " ".join(reasons)
    assert "does not run on cpu" in text and "fp32" in text


@pytest.mark.parametrize("causal", [False, True], ids=["noncausal", "causal"])
@pytest.mark.parametrize("mode", ["fwd", "fwd_bwd"])
def test_flops_match_counter_at_small_windows(mode: str, causal: bool) -> None:
    """FlopCounterMode equals the model at W = 16 and 7 (the contract runs the default W = 128)."""
    for n, window in ((100, 16), (333, 7)):
        prob = Problem(1, 2, n, 32, causal=causal, mode=mode)
        q, k, v = (x.requires_grad_(mode != "fwd") for x in qkv(n, 32, b=1, dtype=torch.float32))
        with FlopCounterMode(display=False) as counter, torch.set_grad_enabled(mode != "fwd"):
            out = WindowAttention(WindowParams(window=window), "torch", 2, 32)(q, k, v, causal)
            if mode != "fwd":
                out.sum().backward()
        params = WindowParams(window=window)
        assert counter.get_total_flops() == WindowAttention.flops(prob, params, "torch", matmul_only=True)


def test_band_pairs_and_costs_linear_in_n() -> None:
    for n, w in ((10, 3), (63, 16), (5, 9)):
        assert band_pairs(n, w, True) == int(naive.band_mask(n, w, True).sum())
        assert band_pairs(n, w, False) == int(naive.band_mask(n, w, False).sum())
    for impl in WindowAttention.impls:
        c1, c2, c3 = (
            WindowAttention.flops(Problem(1, 1, n, 64, causal=True, mode="fwd"), WindowParams(64), impl)
            for n in (1024, 2048, 3072)
        )
        assert c3 - c2 == pytest.approx(c2 - c1, rel=1e-12) and c2 > c1


def test_state_bytes_is_the_window_kv_cache() -> None:
    prob = Problem(1, 4, 1000, 64, dtype="bf16", causal=True)
    assert WindowAttention.state_bytes(prob, WindowParams(window=128), "torch") == 2 * 128 * 64 * 4 * 2
    assert WindowAttention.state_bytes(prob, WindowParams(window=4096), "torch") == 2 * 1000 * 64 * 4 * 2


@pytest.mark.parametrize("value", [{"window": 0}, {"window": True}, {"window": 2.0}])
def test_bad_params_rejected(value: dict) -> None:
    with pytest.raises(ValueError, match="window"):
        WindowAttention.make_params(value)
