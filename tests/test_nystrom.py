"""nystrom: exactness at m = N, naive vs impls, low precision, batch independence, params, costs."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from attentions.nystrom.naive import nystrom_attention_naive, package_pinv, segment_sizes
from attentions.nystrom.naive import segment_means as naive_segment_means
from attentions.nystrom.variant import NystromAttention, NystromParams, forward_flop_terms, segment_means
from harness.measure import accuracy
from harness.measure.costs import qkvo_bytes
from harness.plugins.contract import Problem

B, H = 2, 3
CONVERGED_ITERS = 20  # the pseudo-inverse of the N x N softmax matrix has converged (error < 1e-6)
# bf16 / fp16 output vs the fp32 output on the same fp32 inputs: measured 2.8e-3..7.4e-3 (bf16) and
# 3.5e-4..9.2e-4 (fp16) for N in {63, 256, 1000}, d = 64; most of it is the rounding of the inputs.
LOW_PRECISION_RTOL = {torch.bfloat16: 2e-2, torch.float16: 3e-3}


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    """Relative Frobenius error of `out` against `ref`, in fp64."""
    return ((out.double() - ref.double()).norm() / ref.double().norm()).item()


def make_qkv(n: int, d: int, dtype: torch.dtype = torch.float64, seed: int = 0, batch: int = B):
    gen = torch.Generator().manual_seed(seed)
    return [
        torch.randn(batch, H, n, d, generator=gen, dtype=torch.float64).to(dtype).requires_grad_()
        for _ in range(3)
    ]


def forward_and_grads(fn, q, k, v) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Output and grads of q, k, v for the loss sum(out * w) with a fixed random w."""
    out = fn(q, k, v)
    w = torch.randn(out.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    grads = torch.autograd.grad((out.double() * w).sum(), (q, k, v))
    return out.detach(), list(grads)


def variant(landmarks: int, impl: str = "torch", n: int = 63, d: int = 32, iters: int = 6, **kw):
    """forward of the variant (non-causal) for (B, H, n, d) inputs; kw: dtype."""
    module = NystromAttention(NystromParams(landmarks=landmarks, pinv_iters=iters), impl, H, d, **kw)
    return lambda q, k, v: module(q, k, v, False)


def sdpa(q, k, v):
    return F.scaled_dot_product_attention(q, k, v)


# ----- definition ---------------------------------------------------------------------------------
@pytest.mark.parametrize("n, m", [(1000, 64), (63, 16), (64, 16), (10, 10), (7, 3)])
def test_segments_are_balanced_true_means(n: int, m: int) -> None:
    sizes = segment_sizes(n, m)
    assert sum(sizes) == n and len(sizes) == m and max(sizes) - min(sizes) <= 1
    x = torch.randn(1, 2, n, 5, dtype=torch.float64)
    means = naive_segment_means(x, m)
    starts = [sum(sizes[:i]) for i in range(m)]
    for i in (0, m - 1):  # the first segment is not padded, the last not short
        assert torch.allclose(means[..., i, :], x[..., starts[i] : starts[i] + sizes[i], :].mean(-2))
    assert torch.allclose(segment_means(x, m, torch.float64), means, rtol=0, atol=1e-14)


@pytest.mark.parametrize("landmarks", [63, 64, 500])
def test_landmarks_at_least_n_are_the_tokens(landmarks: int) -> None:
    problem = Problem(batch=B, heads=H, seq_len=63, head_dim=32)
    assert NystromAttention.feature_dim(problem, NystromParams(landmarks=landmarks)) == 63
    q, _, _ = make_qkv(63, 32)
    assert torch.equal(segment_means(q.detach(), 63, torch.float64), q.detach())


@pytest.mark.parametrize("n", [63, 100])
@pytest.mark.parametrize("d", [32, 48])
@pytest.mark.parametrize("fn", ["naive", "torch"])
def test_landmarks_equal_n_is_exact_softmax(n: int, d: int, fn: str) -> None:
    """m = N: F = A = Bm = P, so out = P P^+ P v = P v once the pseudo-inverse has converged."""
    q, k, v = make_qkv(n, d)
    if fn == "naive":
        nys = lambda q, k, v: nystrom_attention_naive(q, k, v, n, CONVERGED_ITERS)  # noqa: E731
    else:
        nys = variant(n, n=n, d=d, iters=CONVERGED_ITERS)
    out, grads = forward_and_grads(nys, q, k, v)
    ref, ref_grads = forward_and_grads(sdpa, q, k, v)
    assert rel_err(out, ref) < 1e-3
    for name, g, rg in zip("qkv", grads, ref_grads, strict=True):
        assert rel_err(g, rg) < 1e-3, f"grad of {name}"


# ----- impls against the naive reference ---------------------------------------------------------
@pytest.mark.parametrize("n, m, d", [(1000, 64, 32), (63, 16, 48), (64, 16, 32), (63, 63, 32), (40, 100, 32)])
@pytest.mark.parametrize("impl", ["torch", "package"])
def test_impls_match_naive_fp64(n: int, m: int, d: int, impl: str) -> None:
    """fp64 forward and grads. The package's Z_0 scale is a max over all (B, H) matrices, so it can
    only equal the per-matrix reference with one matrix: it is compared at B = H = 1."""
    q, k, v = make_qkv(n, d, batch=1 if impl == "package" else B)
    if impl == "package":
        q, k, v = (x.detach()[:, :1].clone().requires_grad_() for x in (q, k, v))
    out, grads = forward_and_grads(variant(m, impl, n=n, d=d), q, k, v)
    ref, ref_grads = forward_and_grads(lambda q, k, v: nystrom_attention_naive(q, k, v, m, 6), q, k, v)
    assert out.shape == q.shape and out.dtype == torch.float64
    assert rel_err(out, ref) < 1e-10
    for name, g, rg in zip("qkv", grads, ref_grads, strict=True):
        assert rel_err(g, rg) < 1e-10, f"grad of {name}"


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("n, m", [(63, 63), (256, 64), (1000, 64)])
def test_low_precision_runs_close_to_fp32(dtype: torch.dtype, n: int, m: int) -> None:
    q, k, v = make_qkv(n, 64, torch.float32)
    ref = variant(m, n=n, d=64)(q, k, v).detach()
    low = [x.detach().to(dtype).requires_grad_() for x in (q, k, v)]
    out = variant(m, n=n, d=64, dtype="bf16" if dtype == torch.bfloat16 else "fp16")(*low)
    assert out.dtype == dtype and torch.isfinite(out).all()
    assert rel_err(out, ref) < LOW_PRECISION_RTOL[dtype]
    out.float().sum().backward()
    assert all(x.grad.dtype == dtype and torch.isfinite(x.grad).all() for x in low)


# ----- batch independence ------------------------------------------------------------------------
def scaled_batch(n: int, d: int, scales: tuple[float, ...]) -> list[torch.Tensor]:
    """q, k of sample b scaled by scales[b]: larger scales give peakier softmaxes, larger column sums."""
    q, k, v = (x.detach() for x in make_qkv(n, d, torch.float32, batch=len(scales)))
    s = torch.tensor(scales).view(-1, 1, 1, 1)
    return [q * s, k * s, v]


@pytest.mark.parametrize("n, m", [(63, 16), (256, 64)])
def test_default_impl_is_batch_independent(n: int, m: int) -> None:
    assert NystromAttention.impls[0] == "torch"
    q, k, v = scaled_batch(n, 32, (1.0, 3.0))
    fn = variant(m, n=n)
    alone, batched = fn(q[:1], k[:1], v[:1]), fn(q, k, v)
    assert torch.allclose(alone[0], batched[0], rtol=0, atol=1e-6)
    assert accuracy.batch_change(fn, q, k, v) < 1e-6  # what the harness's check would record


@pytest.mark.parametrize("n, m", [(63, 16), (256, 64)])
def test_package_impl_depends_on_batch(n: int, m: int) -> None:
    """Upstream issue kept visible: moore_penrose_iter_pinv scales Z_0 by the max column sum over all
    (B, H) matrices, so sample 0's output moves whenever that max lies in another sample."""
    q, k, v = scaled_batch(n, 32, (1.0, 3.0))
    fn = variant(m, "package", n=n)
    alone, batched = fn(q[:1], k[:1], v[:1]), fn(q, k, v)
    assert accuracy.relative_change(batched[0], alone[0]) > 1e-3
    # The harness's check redraws samples 1.. with their own spread. With a calm sample 0 and a peaky
    # sample 1 the batch max lies outside sample 0 before and after, and moves: the recorded change
    # exceeds the default tolerance 1e-4 (1e-2 and 1e-3 here). With alike samples it often does not
    # (0 when sample 0 holds the max; ~1e-5 at N = 1000, m = 64): see README.md.
    assert accuracy.batch_change(fn, *scaled_batch(n, 32, (0.5, 2.0))) > 1e-4


# ----- params and reasons ------------------------------------------------------------------------
@pytest.mark.parametrize(
    "values, match",
    [
        ({"landmarks": 0}, "landmarks must be an int >= 1"),
        ({"landmarks": 8.0}, "landmarks must be an int >= 1"),
        ({"landmarks": True}, "landmarks must be an int >= 1"),
        ({"pinv_iters": 0}, "pinv_iters must be an int >= 1"),
        ({"pinv_iters": "6"}, "pinv_iters must be an int >= 1"),
    ],
)
def test_params_validation(values: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        NystromAttention.make_params(values)


def test_unknown_param_and_defaults() -> None:
    with pytest.raises(KeyError, match="landmarks"):
        NystromAttention.make_params({"num_landmarks": 8})
    assert dataclasses.astuple(NystromAttention.make_params({})) == (64, 6)


@pytest.mark.parametrize("impl", ["torch", "package"])
def test_causal_is_skipped_with_reason(impl: str) -> None:
    causal = Problem(batch=1, heads=1, seq_len=64, head_dim=32, causal=True)
    reasons = NystromAttention.not_supported_reasons(causal, NystromParams(), impl)
    assert len(reasons) == 1 and "landmark" in reasons[0] and "future tokens" in reasons[0]
    assert (
        NystromAttention.not_supported_reasons(
            dataclasses.replace(causal, causal=False), NystromParams(), impl
        )
        == []
    )
    with pytest.raises(ValueError, match="no causal form"):
        q = torch.randn(1, 1, 64, 32)
        NystromAttention(NystromParams(), impl, 1, 32)(q, q, q, True)


def test_info_reports_the_segments_of_the_last_call() -> None:
    module = NystromAttention(NystromParams(landmarks=16), "torch", H, 32)
    assert module.info() == {}
    q, k, v = (x.detach() for x in make_qkv(63, 32, torch.float32))
    module(q, k, v, False)
    assert module.info() == {"landmarks_used": 16, "segment_sizes": "15x4 + 1x3"}


def test_package_pinv_transcription_matches_the_package() -> None:
    """naive.package_pinv (the reference of impl package) is the package's function, written out."""
    from nystrom_attention.nystrom_attention import moore_penrose_iter_pinv

    a = torch.softmax(torch.randn(3, 2, 16, 16, generator=torch.Generator().manual_seed(0)), dim=-1)
    assert torch.allclose(package_pinv(a, 6), moore_penrose_iter_pinv(a, 6), rtol=1e-5, atol=1e-6)


# ----- cost model --------------------------------------------------------------------------------
@pytest.mark.parametrize("n, m, d", [(1000, 64, 48), (63, 63, 32), (100, 7, 32), (40, 100, 16)])
def test_flops_match_flop_counter(n: int, m: int, d: int) -> None:
    """FlopCounterMode sees the matmuls only: they must match exactly, forward and fwd+bwd (autograd
    runs two matmuls per forward one). flops() adds the uncounted "elementwise" part (segment means,
    softmaxes, pseudo-inverse updates), which is under 10% of the matmuls at these shapes."""
    params = NystromParams(landmarks=m)
    problem = Problem(batch=B, heads=H, seq_len=n, head_dim=d)
    terms = forward_flop_terms(problem, params)
    matmuls = sum(v for key, v in terms.items() if key.endswith("_matmul"))
    q, k, v = make_qkv(n, d)
    with FlopCounterMode(display=False) as fwd_counter:
        out = nystrom_attention_naive(q, k, v, m, params.pinv_iters)
    assert fwd_counter.get_total_flops() == pytest.approx(matmuls, rel=1e-12)
    with FlopCounterMode(display=False) as both_counter:
        nystrom_attention_naive(q, k, v, m, params.pinv_iters).sum().backward()
    assert both_counter.get_total_flops() == pytest.approx(3 * matmuls, rel=1e-12)
    assert out.shape == q.shape
    total = NystromAttention.flops(problem, params, "torch")
    assert matmuls < total < 1.10 * matmuls
    fwd_bwd = dataclasses.replace(problem, mode="fwd_bwd")
    assert NystromAttention.flops(fwd_bwd, params, "torch") == pytest.approx(3 * total)
    assert NystromAttention.flops(fwd_bwd, params, "torch", matmul_only=True) == pytest.approx(3 * matmuls)


def test_bytes_moved_grows_with_mode_and_landmarks() -> None:
    problem = Problem(batch=B, heads=H, seq_len=1000, head_dim=64)
    fwd = NystromAttention.bytes_moved(problem, NystromParams(landmarks=64), "torch")
    assert fwd > qkvo_bytes(problem)
    assert NystromAttention.bytes_moved(problem, NystromParams(landmarks=128), "torch") > fwd
    both = dataclasses.replace(problem, mode="fwd_bwd")
    assert NystromAttention.bytes_moved(both, NystromParams(), "torch") > fwd
    bf16 = NystromAttention.bytes_moved(dataclasses.replace(problem, dtype="bf16"), NystromParams(), "torch")
    assert bf16 < fwd
