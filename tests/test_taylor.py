"""`taylor` (second-order Taylor linear attention, Based): the chunked fast path vs naive.py vs an fp64
formula written here, the feature map's identity, projection, masking, the fla wrappers, costs."""

from __future__ import annotations

import math
import sys
import types

import pytest
import torch
from torch import Tensor
from torch.utils.flop_counter import FlopCounterMode

from attentions.taylor import naive
from attentions.taylor.chunked import taylor_features
from attentions.taylor.variant import TaylorAttention, TaylorParams
from harness.plugins import conformance as cf
from harness.plugins.contract import Problem
from tests.shapes import random_qkv as qkv


def variant(d: int, h: int = 2, **params) -> TaylorAttention:
    return TaylorAttention(TaylorParams(**params), "torch", h, d)


def taylor_weights64(q: Tensor, k: Tensor, causal: bool) -> Tensor:
    """(1 + s + s^2/2) / sum over the visible keys, s = q.k / sqrt(d), in fp64, entry by entry."""
    q, k = q.double(), k.double()
    n, d = q.shape[-2:]
    s = torch.einsum("bhid,bhjd->bhij", q, k) / math.sqrt(d)
    w = 1 + s + s * s / 2
    if causal:
        w = w * (torch.arange(n)[None, :] <= torch.arange(n)[:, None])
    return w / w.sum(-1, keepdim=True)


@pytest.mark.parametrize("causal", [False, True], ids=["noncausal", "causal"])
@pytest.mark.parametrize("n,chunk", [(63, 16), (130, 128), (1, 128)])
def test_weights_are_the_normalised_taylor_polynomial(n: int, chunk: int, causal: bool) -> None:
    """No projection, eps 0: with v = the identity (v_j = e_j), out_i is row i of the attention weights;
    variant and naive.py both equal (1 + s + s^2/2) normalised over the visible keys, in fp64."""
    q, k, _ = qkv(n, 32)
    eye = torch.eye(n, dtype=torch.float64).expand(1, 2, n, n)
    expected = taylor_weights64(q, k, causal)
    got = variant(32, eps=0.0, chunk=chunk)(q, k, eye, causal)
    assert cf.rel_err(got, expected) < 1e-12
    assert cf.rel_err(naive.taylor_attention(q, k, eye, causal, eps=0.0), expected) < 1e-12


def test_feature_map_inner_product() -> None:
    """phi(x) . phi(y) = 1 + x.y + (x.y)^2 / 2 for the fast path's map."""
    x, y = torch.randn(2, 100, 24, dtype=torch.float64)
    dot = (x * y).sum(-1)
    assert torch.allclose((taylor_features(x) * taylor_features(y)).sum(-1), 1 + dot + dot**2 / 2, rtol=1e-12)


@pytest.mark.parametrize("causal", [False, True], ids=["noncausal", "causal"])
@pytest.mark.parametrize("proj_dim", [0, 16])
@pytest.mark.parametrize("d,n,chunk", [(32, 1000, 128), (64, 63, 7), (48, 40, 1)])
def test_variant_matches_naive_fp64(d: int, n: int, chunk: int, proj_dim: int, causal: bool) -> None:
    """Forward and q, k, v gradients, fp64, odd lengths and chunks, with and without the projection."""
    if proj_dim == 0 and n == 1000:
        n = 200  # D = 1057 features: keep the fp64 products small
    attn = variant(d, proj_dim=proj_dim, chunk=chunk, seed=3)
    q, k, v = (x.requires_grad_() for x in qkv(n, d))
    w = torch.randn(1, 2, n, d, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    out = attn(q, k, v, causal)
    ref = naive.reference(attn, q, k, v, causal)
    assert out.dtype == torch.float64 and cf.rel_err(out, ref) < 1e-12
    grads = torch.autograd.grad((out * w).sum(), (q, k, v))
    ref_grads = torch.autograd.grad((ref * w).sum(), (q, k, v))
    assert max(cf.rel_err(a, b) for a, b in zip(grads, ref_grads, strict=True)) < 1e-11


def test_projection_is_fixed_seeded_and_preserves_scores() -> None:
    """P (d, d') is a buffer drawn from its seed alone (not torch's global RNG); E[q P . k P] = q . k."""
    torch.manual_seed(0)
    a = variant(64, proj_dim=16, seed=5)
    torch.manual_seed(1)
    b = variant(64, proj_dim=16, seed=5)
    assert a.projection.shape == (64, 16) and torch.equal(a.projection, b.projection)
    assert not torch.equal(a.projection, variant(64, proj_dim=16, seed=6).projection)
    assert not list(a.parameters()) and variant(64).projection is None
    big = TaylorAttention(TaylorParams(proj_dim=4096), "torch", 1, 8).projection.double()
    assert torch.allclose(big @ big.T, torch.eye(8, dtype=torch.float64), atol=0.1)


@pytest.mark.parametrize("causal", [False, True], ids=["noncausal", "causal"])
def test_arbitrary_key_padding_mask(causal: bool) -> None:
    """Padding anywhere, chunk 16: equal to naive.py with the mask at real rows; padded tokens change
    nothing; a padded first token (no visible key for query 0 when causal) stays finite."""
    q, k, v = qkv(63, 32, b=2)
    mask = torch.rand(2, 63, generator=torch.Generator().manual_seed(3)) > 0.3
    mask[0, 0], mask[1, 0] = True, False
    real = mask[:, None, :, None]
    attn = variant(32, chunk=16, proj_dim=8)
    out = attn(q, k, v, causal, key_padding_mask=mask)
    assert torch.isfinite(out).all()
    ref = naive.reference(attn, q, k, v, causal, mask)
    assert cf.rel_err(out * real, ref * real) < 1e-12
    moved = [torch.where(real, x, 7.0 * torch.randn_like(x)) for x in (q, k, v)]
    assert cf.rel_err(attn(*moved, causal, key_padding_mask=mask) * real, out * real) < 1e-12


@pytest.mark.parametrize("impl,proj_dim", [("fla", 16), ("fla_parallel", 0)])
def test_fla_wrappers(monkeypatch: pytest.MonkeyPatch, impl: str, proj_dim: int) -> None:
    """The fla impls pass q', k' (projected) and v in (B, N, H, d), scale 1/sqrt(d) and use_norm: a
    stand-in for fla.ops.based computing 1 + s + s^2/2 (+ 1e-6 in the normalizer) gives naive.py's result."""
    seen = []

    def based(q: Tensor, k: Tensor, v: Tensor, scale: float, use_norm: bool) -> Tensor:
        seen.append((q.shape, scale, use_norm))
        s = torch.einsum("bihe,bjhe->bhij", q.double(), k.double()) * scale
        w = (1 + s + s * s / 2).tril()
        out = (w @ v.double().transpose(1, 2)) / (w.sum(-1, keepdim=True) + 1e-6)
        return out.transpose(1, 2).to(q.dtype)

    module = types.SimpleNamespace(fused_chunk_based=based, parallel_based=based)
    monkeypatch.setitem(sys.modules, "fla.ops.based", module)
    attn = TaylorAttention(TaylorParams(proj_dim=proj_dim), impl, 2, 32)
    q, k, v = qkv(40, 32, dtype=torch.float32)
    out = cf.call(attn, q, k, v, True)
    assert cf.rel_err(out, naive.reference(attn, q, k, v, True)) < 1e-6
    assert seen == [(torch.Size([1, 40, 2, proj_dim or 32]), 32**-0.5, True)]
    with pytest.raises(ValueError, match="causal"):
        attn(q, k, v, False)


def test_fla_reasons() -> None:
    prob = Problem(1, 2, 128, 64, dtype="bf16", device="cuda", causal=True)
    fused = " ".join(TaylorAttention.not_supported_reasons(prob, TaylorParams(), "fla"))
    assert "d' <= 16" in fused and "not 64" in fused
    parallel = TaylorAttention.not_supported_reasons(prob, TaylorParams(), "fla_parallel")
    assert not any("d' <=" in r for r in parallel)
    eps = " ".join(TaylorAttention.not_supported_reasons(prob, TaylorParams(proj_dim=16, eps=0.0), "fla"))
    assert "eps" in eps


@pytest.mark.parametrize("causal", [False, True], ids=["noncausal", "causal"])
@pytest.mark.parametrize("mode", ["fwd", "fwd_bwd"])
def test_flops_match_counter_with_projection(mode: str, causal: bool) -> None:
    """FlopCounterMode equals the model with proj_dim 16 (projection products; the contract runs 0)."""
    n, d = 333, 64
    params = TaylorParams(proj_dim=16, chunk=64)
    q, k, v = (x.float().requires_grad_(mode != "fwd") for x in qkv(n, d))
    attn = TaylorAttention(params, "torch", 2, d)
    with FlopCounterMode(display=False) as counter, torch.set_grad_enabled(mode != "fwd"):
        out = attn(q, k, v, causal)
        if mode != "fwd":
            out.sum().backward()
    prob = Problem(1, 2, n, d, causal=causal, mode=mode)
    assert counter.get_total_flops() == TaylorAttention.flops(prob, params, "torch", matmul_only=True)


def test_state_bytes() -> None:
    """fp32 S (D x d) + z (D) per head, D = 1 + d' + d'^2: Based's d' = 16 at d = 64, 8 heads."""
    prob = Problem(1, 8, 4096, 64, dtype="bf16", causal=True)
    assert TaylorAttention.state_bytes(prob, TaylorParams(proj_dim=16), "torch") == 8 * 273 * 65 * 4
    assert TaylorAttention.state_bytes(prob, TaylorParams(), "torch") == 8 * 4161 * 65 * 4


@pytest.mark.parametrize(
    "value", [{"proj_dim": -1}, {"proj_dim": 2.0}, {"seed": -1}, {"eps": -1.0}, {"chunk": 0}, {"chunk": True}]
)
def test_bad_params_rejected(value: dict) -> None:
    with pytest.raises(ValueError, match="taylor"):
        TaylorAttention.make_params(value)
