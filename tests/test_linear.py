"""`linear` (elu + 1 linear attention): variant (chunked) vs naive.py vs an fp64 definition, costs.

naive.py and chunked.py both compute in fp32 whatever the input dtype, so they are compared with
each other in fp32 and each against `definition64`, the formula evaluated in fp64.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.flop_counter import FlopCounterMode

from attentions.linear import naive
from attentions.linear.chunked import (
    elu_feature_map,
    linear_attention_causal_chunked,
    linear_attention_noncausal,
)
from attentions.linear.naive import linear_attention
from attentions.linear.variant import LinearAttention, LinearParams
from harness.measure.costs import chunk_sizes
from harness.plugins.contract import Problem
from tests.shapes import HEAD_DIMS

B, H = 1, 2
# (N, chunk): odd and long N at the default chunk, and every boundary of a small chunk: N < chunk,
# N = chunk - 1, chunk, chunk + 1, a multiple of chunk, chunk = 1, chunk > N.
LENGTHS = [(63, 128), (128, 128), (129, 128), (1000, 128), (1, 16), (15, 16), (16, 16), (17, 16), (48, 16)]
EDGE_CHUNKS = [(63, 1), (63, 1000)]
FP32_RTOL = 1e-5  # measured <= 5e-7 (outputs) and <= 1e-6 (gradients), naive vs chunked
GRAD_RTOL = 1e-4


def rel_err(out: Tensor, ref: Tensor) -> float:
    ref64 = ref.detach().double()
    diff = (out.detach().double() - ref64).norm().item()
    return diff / ref64.norm().item() if diff else 0.0


def make_qkv(n: int, d: int, seed: int = 0, dtype: torch.dtype = torch.float32) -> list[Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(B, H, n, d, generator=gen).to(dtype).requires_grad_() for _ in range(3)]


def definition64(q: Tensor, k: Tensor, v: Tensor, causal: bool, eps: float) -> Tensor:
    """out_i = sum_j w_ij v_j / (sum_j w_ij + eps), w_ij = phi(q_i) . phi(k_j) (j <= i if causal), fp64.

    phi(x) = exp(x) for x < 0 and x + 1 otherwise (= elu(x) + 1). (B, H, N, d) -> fp64 (B, H, N, d).
    """
    q, k, v = (x.detach().double() for x in (q, k, v))
    phi_q, phi_k = (torch.where(x < 0, torch.exp(x), x + 1) for x in (q, k))
    weights = torch.einsum("bhid,bhjd->bhij", phi_q, phi_k)  # (B, H, N, N)
    if causal:
        weights = torch.tril(weights)
    return torch.einsum("bhij,bhjd->bhid", weights, v) / (weights.sum(-1, keepdim=True) + eps)


def variant(
    n: int, d: int, causal: bool, chunk: int = 128, mode: str = "fwd_bwd", dtype: str = "fp32"
) -> LinearAttention:
    problem = Problem(batch=B, heads=H, seq_len=n, head_dim=d, dtype=dtype, causal=causal, mode=mode)
    params = LinearAttention.make_params({"chunk": chunk})
    assert LinearAttention.not_supported_reasons(problem, params, "torch") == []
    return LinearAttention(params, "torch", H, d, dtype=dtype)


def forward_and_grads(fn, q: Tensor, k: Tensor, v: Tensor) -> tuple[Tensor, ...]:
    out = fn(q, k, v)
    w = torch.randn(out.shape, generator=torch.Generator().manual_seed(1))
    return (out.detach(), *torch.autograd.grad((out * w).sum(), (q, k, v)))


@pytest.mark.sampled(12)  # of 88; the contract tests add every head dim at N = 63 and N = 1000
@pytest.mark.parametrize("causal", [False, True], ids=["noncausal", "causal"])
@pytest.mark.parametrize("d", HEAD_DIMS)
@pytest.mark.parametrize("n,chunk", LENGTHS + EDGE_CHUNKS)
def test_chunked_matches_naive_and_definition(n: int, chunk: int, d: int, causal: bool) -> None:
    attn = variant(n, d, causal, chunk)
    q, k, v = make_qkv(n, d)
    out, *grads = forward_and_grads(lambda *x: attn(*x, causal), q, k, v)
    ref, *ref_grads = forward_and_grads(lambda *x: linear_attention(*x, causal, attn.params.eps), q, k, v)
    assert out.shape == q.shape and out.dtype == q.dtype
    assert rel_err(out, ref) < FP32_RTOL
    for name, g, rg in zip("qkv", grads, ref_grads, strict=True):
        # at N = 1 the output is v (times 1 - eps / (A + eps)): the grads of q, k are ~1e-8, rounding
        # noise in both forms, so they are compared against a floor of 1e-2 (others have norms ~10)
        assert (g - rg).norm() < GRAD_RTOL * max(rg.norm(), 1e-2), f"grad of {name}"
    exact = definition64(q, k, v, causal, attn.params.eps)
    assert rel_err(out, exact) < FP32_RTOL and rel_err(ref, exact) < FP32_RTOL


@pytest.mark.parametrize("causal", [False, True], ids=["noncausal", "causal"])
def test_grads_match_fp64_definition(causal: bool) -> None:
    """Gradients of naive.py (fp32) against autograd through the fp64 definition."""
    q, k, v = make_qkv(63, 48)
    q64, k64, v64 = (x.detach().double().requires_grad_() for x in (q, k, v))
    _, *grads = forward_and_grads(lambda *x: linear_attention(*x, causal), q, k, v)
    w = torch.randn(q.shape, generator=torch.Generator().manual_seed(1)).double()  # as forward_and_grads
    phi = lambda x: F.elu(x) + 1.0  # noqa: E731  (fp64 autograd through elu)
    weights = phi(q64) @ phi(k64).transpose(-1, -2)
    weights = weights.tril() if causal else weights
    out64 = (weights @ v64) / (weights.sum(-1, keepdim=True) + 1e-6)
    grads64 = torch.autograd.grad((out64 * w).sum(), (q64, k64, v64))
    for name, g, g64 in zip("qkv", grads, grads64, strict=True):
        assert rel_err(g, g64) < GRAD_RTOL, f"grad of {name}"


def test_chunked_functions_are_the_shared_kernels() -> None:
    """The variant is exactly chunked.py on elu + 1 features (same ops, bit-identical)."""
    q, k, v = (x.detach() for x in make_qkv(100, 32))
    phi_q, phi_k = elu_feature_map(q), elu_feature_map(k)
    attn = variant(100, 32, True, chunk=32)
    assert torch.equal(attn(q, k, v, True), linear_attention_causal_chunked(phi_q, phi_k, v, 1e-6, 32))
    assert torch.equal(attn(q, k, v, False), linear_attention_noncausal(phi_q, phi_k, v, 1e-6))


@pytest.mark.parametrize("feature_map", [elu_feature_map, naive.elu_feature_map], ids=["chunked", "naive"])
def test_elu_features_positive(feature_map) -> None:
    """phi = elu + 1 equals exp(x) below 0 and x + 1 above; strictly positive where fp32 can tell
    (down to x ~ -87, where `elu(x) + 1` would round to exactly 0 below x ~ -17). Both the fast path's
    and naive.py's forms, written independently."""
    x = torch.linspace(-80.0, 50.0, 10_001)
    phi = feature_map(x)
    assert (phi > 0).all()
    expected = torch.where(x < 0, torch.exp(x.double()), x.double() + 1)
    assert torch.allclose(phi.double(), expected, rtol=1e-6, atol=1e-7)
    wide = torch.tensor([-1e4, -100.0, -20.0, 0.0, 1e4])
    assert (feature_map(wide) >= 0).all()


@pytest.mark.parametrize("causal", [False, True], ids=["noncausal", "causal"])
def test_arbitrary_key_padding_mask_matches_naive(causal: bool) -> None:
    """Padding anywhere (not only at the end), chunk 16: the variant equals naive.py with the mask."""
    n, d = 63, 32
    q, k, v = (x.detach() for x in make_qkv(n, d))
    gen = torch.Generator().manual_seed(3)
    mask = torch.rand(B, n, generator=gen) > 0.3
    mask[:, 0] = True  # every query sees at least one real key
    out = variant(n, d, causal, chunk=16)(q, k, v, causal, key_padding_mask=mask)
    ref = linear_attention(q, k, v, causal, 1e-6, key_padding_mask=mask)
    real = mask[:, None, :, None]
    assert rel_err(out * real, ref * real) < FP32_RTOL
    moved = [torch.where(real, x, 5.0 * torch.randn_like(x)) for x in (q, k, v)]  # change padded tokens
    out_moved = variant(n, d, causal, chunk=16)(*moved, causal, key_padding_mask=mask)
    assert rel_err(out_moved * real, out * real) < FP32_RTOL


@pytest.mark.parametrize("causal", [False, True], ids=["noncausal", "causal"])
def test_vanishing_features_stay_finite(causal: bool) -> None:
    """Very negative q, k give phi = 0 in fp32; eps keeps the output finite (0) instead of 0/0."""
    q, k, v = (x.detach() for x in make_qkv(40, 32))
    out = variant(40, 32, causal, chunk=16)(q - 100.0, k - 100.0, v, causal)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
@pytest.mark.parametrize("causal", [False, True], ids=["noncausal", "causal"])
def test_long_half_precision_normalizer(dtype: torch.dtype, causal: bool) -> None:
    """At N = 2048 with phi ~ 4 the normalizer reaches ~8e5 > fp16 max (65504): kept in fp32."""
    n, d = 2048, 32
    gen = torch.Generator().manual_seed(0)
    q, k = (torch.randn(1, 1, n, d, generator=gen) + 3.0 for _ in range(2))
    v = torch.randn(1, 1, n, d, generator=gen)
    attn = variant(n, d, causal, mode="fwd", dtype={torch.float16: "fp16", torch.bfloat16: "bf16"}[dtype])
    out = attn(q.to(dtype), k.to(dtype), v.to(dtype), causal)
    ref = attn(q.to(dtype).float(), k.to(dtype).float(), v.to(dtype).float(), causal)
    assert out.dtype == dtype and torch.isfinite(out).all()
    assert rel_err(out, ref) < 1e-2


@pytest.mark.parametrize("value", [{"chunk": 0}, {"chunk": True}, {"chunk": 2.0}, {"eps": -1.0}])
def test_bad_params_rejected(value: dict) -> None:
    with pytest.raises(ValueError, match="linear"):
        LinearAttention.make_params(value)


def test_chunk_sizes() -> None:
    assert chunk_sizes(1000, 128) == [128] * 7 + [104]
    assert chunk_sizes(128, 128) == [128] and chunk_sizes(129, 128) == [128, 1]
    assert sum(chunk_sizes(63, 1)) == 63 and chunk_sizes(63, 1000) == [63]


def counted_flops(fn, *args, backward: bool = False) -> int:
    with FlopCounterMode(display=False) as counter:
        out = fn(*args)
        if backward:
            out.sum().backward()
    return counter.get_total_flops()


def model(
    n: int, d: int, causal: bool, chunk: int = 128, mode: str = "fwd", matmul_only: bool = True
) -> float:
    prob = Problem(B, H, n, d, causal=causal, mode=mode)
    return LinearAttention.flops(prob, LinearParams(chunk=chunk), "torch", matmul_only=matmul_only)


@pytest.mark.parametrize("d", HEAD_DIMS)
def test_noncausal_flops_match_counter(d: int) -> None:
    """Non-causal: phi(k)^T v, phi(q) S, phi(q) z, exactly; the model's total adds the elementwise work."""
    n = 1000
    q, k, v = (x.detach() for x in make_qkv(n, d))
    counted = counted_flops(variant(n, d, False), q, k, v, False)
    assert counted == B * H * (4 * n * d * d + 2 * n * d) == model(n, d, False)
    assert model(n, d, False, matmul_only=False) > counted


@pytest.mark.parametrize("d", [32, 128])
@pytest.mark.parametrize("n,chunk", [(1000, 128), (63, 16), (256, 128)])
def test_causal_flops_match_counter_on_chunked(n: int, chunk: int, d: int) -> None:
    """Causal: the chunked forward's masked c x c products, state reads and updates, exactly."""
    q, k, v = (x.detach() for x in make_qkv(n, d))
    counted = counted_flops(variant(n, d, True, chunk), q, k, v, True)
    sizes = chunk_sizes(n, chunk)
    assert counted == B * H * (2 * sum(c * c for c in sizes) * 2 * d + 4 * n * d * d + 2 * n * d)
    assert counted == model(n, d, True, chunk)


@pytest.mark.parametrize("causal", [False, True], ids=["noncausal", "causal"])
def test_fwd_bwd_flops_vs_counter(causal: bool) -> None:
    """What autograd executes: 2 products per forward one, except block 0's reads of the zero state
    (1) and the unused last state update (0): below 3x the forward when causal, exactly 3x when not."""
    n, d = 500, 64
    q, k, v = make_qkv(n, d)
    counted = counted_flops(variant(n, d, causal), q, k, v, causal, backward=True)
    assert counted == model(n, d, causal, mode="fwd_bwd")
    ratio = counted / model(n, d, causal)
    assert ratio == 3.0 if not causal else 2.5 < ratio < 3.0


@pytest.mark.parametrize("causal", [False, True], ids=["noncausal", "causal"])
@pytest.mark.parametrize("mode", ["fwd", "fwd_bwd"])
def test_costs_linear_in_n(mode: str, causal: bool) -> None:
    """Costs are affine in N (N a multiple of the chunk): equal steps from 1K to 2K to 3K tokens."""
    params = LinearParams()
    for cost in (LinearAttention.flops, LinearAttention.bytes_moved):
        c1, c2, c3 = (
            cost(Problem(B, H, n, 64, causal=causal, mode=mode), params, "torch") for n in (1024, 2048, 3072)
        )
        assert c3 - c2 == pytest.approx(c2 - c1, rel=1e-12) and c2 - c1 > 0
