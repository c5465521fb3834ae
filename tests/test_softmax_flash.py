"""softmax and flash against their naive fp32 references: forward, gradients, reasons, costs."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

import attentions.flash.variant as flash_variant
from attentions.flash.naive import exact_attention
from attentions.flash.variant import FlashAttention
from attentions.softmax.naive import softmax_attention
from attentions.softmax.variant import SoftmaxAttention
from harness.measure.costs import exact_attention_flops
from harness.plugins.contract import DTYPES, AttentionVariant, Problem
from tests.shapes import HEAD_DIMS, SEQ_LENS

B, H = 2, 3
FP32_RTOL = 1e-5
# Relative Frobenius error of the CPU flash kernel vs fp32 on the same rounded inputs was
# ~2e-3 (bf16) and ~3e-4 (fp16) at N=63 (unit roundoff 3.9e-3 / 4.9e-4); bounds leave ~4x room.
LOW_PRECISION_RTOL = {"bf16": 1e-2, "fp16": 2e-3}


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    """Relative Frobenius error of `out` against `ref`, in fp64."""
    return ((out.double() - ref.double()).norm() / ref.double().norm()).item()


def make_qkv(n: int, d: int, dtype: torch.dtype = torch.float32, seed: int = 0) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(B, H, n, d, generator=gen).to(dtype).requires_grad_() for _ in range(3)]


def forward_and_grads(fn, q, k, v, causal: bool) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Output and grads of q, k, v for the loss sum(out * w) with a fixed random w."""
    out = fn(q, k, v, causal)
    w = torch.randn(out.shape, generator=torch.Generator().manual_seed(1))
    grads = torch.autograd.grad((out.float() * w).sum(), (q, k, v))
    return out.detach(), list(grads)


def check_against_naive(variant, naive, n: int, d: int, causal: bool) -> None:
    q, k, v = make_qkv(n, d)
    out, grads = forward_and_grads(variant, q, k, v, causal)
    ref, ref_grads = forward_and_grads(naive, q, k, v, causal)
    assert out.shape == q.shape and out.dtype == q.dtype
    assert rel_err(out, ref) < FP32_RTOL
    for name, g, rg in zip("qkv", grads, ref_grads, strict=True):
        assert rel_err(g, rg) < FP32_RTOL, f"grad of {name}"


def problem(n: int = 63, d: int = 64, dtype: str = "fp32", causal: bool = False, mode: str = "fwd", **kw):
    return Problem(batch=B, heads=H, seq_len=n, head_dim=d, dtype=dtype, causal=causal, mode=mode, **kw)


def build(cls: type[AttentionVariant], impl: str, p: Problem) -> AttentionVariant:
    """The variant for problem p, as the runner builds it (default params)."""
    return cls(cls.make_params({}), impl, p.heads, p.head_dim, p.device, p.dtype)


@pytest.mark.sampled(5)  # of 16
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("d", HEAD_DIMS)
@pytest.mark.parametrize("n", SEQ_LENS)
def test_softmax_matches_naive(n: int, d: int, causal: bool) -> None:
    variant = build(SoftmaxAttention, "torch", problem(n, d, causal=causal))
    check_against_naive(variant, softmax_attention, n, d, causal)


@pytest.mark.sampled(5)  # of 16
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("d", HEAD_DIMS)
@pytest.mark.parametrize("n", SEQ_LENS)
def test_flash_sdpa_matches_naive(n: int, d: int, causal: bool) -> None:
    p = problem(n, d, causal=causal, mode="fwd_bwd")
    assert FlashAttention.not_supported_reasons(p, FlashAttention.make_params({}), "sdpa") == []
    variant = build(FlashAttention, "sdpa", p)
    check_against_naive(variant, exact_attention, n, d, causal)


@pytest.mark.parametrize("causal", [False, True])
def test_softmax_naive_matches_sdpa_math_backend(causal: bool) -> None:
    """An independent check of the reference itself: torch's own math kernel, in fp64."""
    q, k, v = (t.detach().double() for t in make_qkv(63, 48))
    with sdpa_kernel(SDPBackend.MATH):
        ref = F.scaled_dot_product_attention(q, k, v, is_causal=causal)
    assert rel_err(softmax_attention(q, k, v, causal), ref) < 1e-12


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("dtype", ["bf16", "fp16"])
@pytest.mark.parametrize("name", ["softmax", "flash"])
def test_low_precision_close_to_fp32(name: str, dtype: str, causal: bool) -> None:
    cls, impl = (SoftmaxAttention, "torch") if name == "softmax" else (FlashAttention, "sdpa")
    p = problem(63, 64, dtype=dtype, causal=causal, mode="fwd_bwd")
    assert cls.not_supported_reasons(p, cls.make_params({}), impl) == []
    q, k, v = make_qkv(63, 64, DTYPES[dtype])
    out, grads = forward_and_grads(build(cls, impl, p), q, k, v, causal)
    ref, ref_grads = forward_and_grads(exact_attention, q, k, v, causal)  # fp32 on the rounded inputs
    assert out.dtype == DTYPES[dtype]
    assert rel_err(out, ref) < LOW_PRECISION_RTOL[dtype]
    for g, rg in zip(grads, ref_grads, strict=True):
        assert g.dtype == DTYPES[dtype] and rel_err(g, rg) < 3 * LOW_PRECISION_RTOL[dtype]


@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("causal", [False, True])
def test_sdpa_uses_the_flash_kernel(causal: bool, masked: bool) -> None:
    """The restricted backend ran (no silent fallback to the math kernel): check the autograd node,
    with and without a key-padding mask (passed to the flash kernel as attn_mask)."""
    q, k, v = make_qkv(63, 32)
    mask = (torch.arange(63) < torch.tensor([63, 40, 17])[:B, None]) if masked else None
    out = build(FlashAttention, "sdpa", problem(causal=causal, masked=masked))(q, k, v, causal, mask)
    assert "FlashAttention" in type(out.grad_fn).__name__


@pytest.mark.parametrize("impl,package", [("flash_attn", "flash_attn"), ("xformers", "xformers")])
def test_missing_package_is_a_reason(impl: str, package: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(
        "harness.plugins.contract.missing_packages", lambda mods: [m for m in mods if m == package]
    )
    reasons = FlashAttention.not_supported_reasons(problem(dtype="bf16", device="cuda"), None, impl)
    assert reasons == [f"flash/{impl} needs optional package(s) not installed: {package}"]


@pytest.mark.parametrize("impl,package", [("flash_attn", "flash_attn"), ("xformers", "xformers")])
def test_missing_package_here(impl: str, package: str) -> None:
    """Without monkeypatching: on this machine the packages are absent, and the reason says so."""
    if flash_variant.device_available("cuda"):
        pytest.skip("CUDA machine: the packages may be installed")
    for device in ("cpu", "cuda"):
        reasons = FlashAttention.not_supported_reasons(problem(dtype="bf16", device=device), None, impl)
        assert any(package in r and "not installed" in r for r in reasons), reasons
        assert (device == "cpu") == any("CUDA only" in r for r in reasons)


def test_static_cuda_rules() -> None:
    reasons = FlashAttention.not_supported_reasons(problem(dtype="fp32", device="cuda"), None, "sdpa")
    assert reasons == ["flash/sdpa supports fp16/bf16 only on CUDA, not fp32"]
    reasons = FlashAttention.not_supported_reasons(problem(d=512, dtype="bf16", device="cuda"), None, "sdpa")
    assert reasons == ["flash/sdpa supports head_dim <= 256, not 512"]
    assert FlashAttention.not_supported_reasons(problem(), None, "nope") == [
        "flash has no impl 'nope' (impls: sdpa, flash_attn, xformers)"
    ]


def test_probe_failure_is_a_readable_reason(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(impl, q, k, v, causal, mask=None):
        warnings.warn("Flash attention kernel not used because: head_dim is odd", UserWarning, stacklevel=1)
        raise RuntimeError("No available kernel. Aborting execution.")

    monkeypatch.setattr(flash_variant, "attend", refuse)
    flash_variant.probe.cache_clear()
    try:
        reasons = FlashAttention.not_supported_reasons(problem(d=33, causal=True, mode="bwd"), None, "sdpa")
    finally:
        flash_variant.probe.cache_clear()
    assert len(reasons) == 1
    assert reasons[0].startswith("flash/sdpa cannot run fp32 causal head_dim=33 with backward on cpu")
    assert "head_dim is odd" in reasons[0] and "No available kernel" in reasons[0]


def test_layout_per_impl() -> None:
    assert [FlashAttention.layout_for(i) for i in FlashAttention.impls] == ["bhnd", "bnhd", "bnhd"]
    assert SoftmaxAttention.layout_for("torch") == "bhnd"


def test_cost_models() -> None:
    p = problem(1000, 64)
    n, d = 1000, 64
    assert SoftmaxAttention.flops(p, None, "torch", matmul_only=True) == FlashAttention.flops(p, None, "sdpa")
    assert FlashAttention.flops(p, None, "sdpa") == B * H * 4 * n * n * d
    causal = problem(1000, 64, causal=True)
    # flash skips the blocks above the diagonal; softmax computes the masked half, then hides it
    assert FlashAttention.flops(causal, None, "sdpa") == pytest.approx(B * H * 2 * n * n * d, rel=2e-3)
    assert SoftmaxAttention.flops(causal, None, "torch") == SoftmaxAttention.flops(p, None, "torch")
    # a key-padding mask carries the causal triangle inside the mask: every block is computed
    masked = problem(1000, 64, causal=True, masked=True)
    assert FlashAttention.flops(masked, None, "sdpa") == FlashAttention.flops(p, None, "sdpa")
    assert FlashAttention.flops(problem(mode="fwd_bwd"), None, "sdpa") == 3.5 * FlashAttention.flops(
        problem(), None, "sdpa"
    )
    softmax_fwd = SoftmaxAttention.flops(problem(), None, "torch", matmul_only=True)
    assert SoftmaxAttention.flops(problem(mode="fwd_bwd"), None, "torch", matmul_only=True) == 3 * softmax_fwd
    qkvo = 4 * B * H * n * d * 4
    assert FlashAttention.bytes_moved(p, None, "sdpa") == qkvo
    assert SoftmaxAttention.bytes_moved(p, None, "torch") == qkvo + 4 * B * H * n * n * 4  # S and P, w + r
    # the materialized matrix is the same size with or without the causal mask
    assert SoftmaxAttention.bytes_moved(causal, None, "torch") == SoftmaxAttention.bytes_moved(
        p, None, "torch"
    )


@pytest.mark.parametrize("mode", ["fwd", "bwd", "fwd_bwd"])
@pytest.mark.parametrize("causal", [False, True])
def test_exact_attention_flops(causal: bool, mode: str) -> None:
    """The "throughput against exact attention" yardstick: FlashAttention's count, 4 N^2 d forward per
    (batch, head) times (N + 1) / 2N causal, backward 2.5x."""
    n, d = 1000, 64
    p = problem(n, d, causal=causal, mode=mode)
    fwd = B * H * 4 * n * n * d * ((n + 1) / (2 * n) if causal else 1.0)
    assert exact_attention_flops(p) == pytest.approx({"fwd": 1, "bwd": 2.5, "fwd_bwd": 3.5}[mode] * fwd)
    assert exact_attention_flops(p) == pytest.approx(FlashAttention.flops(p, None, "sdpa"))


def test_softmax_flops_match_flop_counter() -> None:
    """FlopCounterMode counts the two matmuls of the naive reference, 4 N^2 d per (b, h): the model's
    matmul part, exactly (softmax's elementwise work is a separate, uncounted term)."""
    n, d = 256, 64
    q, k, v = (t.detach() for t in make_qkv(n, d))
    with FlopCounterMode(display=False) as counter:
        softmax_attention(q, k, v, causal=False)
    assert counter.get_total_flops() == SoftmaxAttention.flops(problem(n, d), None, "torch", matmul_only=True)
