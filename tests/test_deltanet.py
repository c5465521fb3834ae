"""`deltanet` (the delta rule, gated or not): the chunkwise WY/UT fast path vs the token-by-token
recurrence of naive.py vs an fp64 recurrence written here with the explicit (I - beta k k^T); what
the delta rule does (overwrite a key's value); masks; the fla wrapper; costs; MQAR training."""

from __future__ import annotations

import sys
import types

import pytest
import torch
from torch import Tensor
from torch.utils.flop_counter import FlopCounterMode

from attentions.deltanet import naive
from attentions.deltanet.variant import DeltaNetAttention, DeltaNetParams, retnet_decays
from harness.kinds.mqar.data import MQARSpec, generator, mqar_batch
from harness.kinds.mqar.model import build_model
from harness.kinds.mqar.train import masked_loss
from harness.plugins import conformance as cf
from harness.plugins.contract import Problem
from tests.shapes import random_qkv as qkv


def variant(d: int, h: int = 2, **params) -> DeltaNetAttention:
    torch.manual_seed(0)
    return DeltaNetAttention(DeltaNetParams(**params), "torch", h, d).double()


def delta_rule64(q: Tensor, k: Tensor, v: Tensor, beta: Tensor, alpha: Tensor) -> Tensor:
    """The papers' recurrence in fp64 with the explicit (d x d) matrices, one (batch, head) at a time:
    S_t = alpha S_{t-1} (I - beta k_t k_t^T) + beta v_t k_t^T, o_t = S_t q_t, q and k L2-normalised,
    q / sqrt(d). q, k, v: (B, H, N, d); beta, alpha: (H,)."""
    B, H, N, d = q.shape
    out = torch.empty(B, H, N, d, dtype=torch.float64)
    eye = torch.eye(d, dtype=torch.float64)
    for b in range(B):
        for h in range(H):
            S = torch.zeros(d, d, dtype=torch.float64)
            for t in range(N):
                kt = k[b, h, t].double() / torch.sqrt((k[b, h, t].double() ** 2).sum() + 1e-6)
                qt = q[b, h, t].double() / torch.sqrt((q[b, h, t].double() ** 2).sum() + 1e-6) / d**0.5
                S = alpha[h] * S @ (eye - beta[h] * torch.outer(kt, kt)) + beta[h] * torch.outer(
                    v[b, h, t], kt
                )
                out[b, h, t] = S @ qt
    return out


@pytest.mark.parametrize("gated", [False, True], ids=["delta", "gated"])
def test_naive_is_the_papers_recurrence(gated: bool) -> None:
    attn = variant(16, gated=gated, beta_logit=0.7)
    q, k, v = qkv(40, 16)
    beta = torch.sigmoid(attn.beta_logit.detach())
    alpha = torch.exp(-torch.exp(attn.A_log.detach())) if gated else torch.ones(2, dtype=torch.float64)
    expected = delta_rule64(q, k, v, beta, alpha)
    assert cf.rel_err(naive.reference(attn, q, k, v, True), expected) < 1e-12


@pytest.mark.parametrize("gated", [False, True], ids=["delta", "gated"])
@pytest.mark.parametrize(
    "n,d,chunk", [(1, 32, 64), (63, 32, 16), (200, 48, 64), (130, 64, 1), (100, 32, 1000)]
)
def test_chunked_matches_recurrence_fp64(n: int, d: int, chunk: int, gated: bool) -> None:
    """Outputs and the gradients of q, k, v, beta_logit (and A_log): chunked vs naive.py in fp64."""
    attn = variant(d, gated=gated, chunk=chunk, beta_logit=0.3)
    q, k, v = (x.requires_grad_() for x in qkv(n, d))
    w = torch.randn(1, 2, n, d, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    leaves = [q, k, v, *attn.parameters()]
    out, ref = attn(q, k, v, True), naive.reference(attn, q, k, v, True)
    assert out.dtype == torch.float64 and cf.rel_err(out, ref) < 1e-11
    grads = torch.autograd.grad((out * w).sum(), leaves)
    ref_grads = torch.autograd.grad((ref * w).sum(), leaves)
    assert len(leaves) == (5 if gated else 4)
    assert max(cf.rel_err(a, b) for a, b in zip(grads, ref_grads, strict=True)) < 1e-10


def test_delta_rule_overwrites_a_key() -> None:
    """beta = 1: writing v1 then v2 under the same key leaves v2 (the delta rule replaces, linear
    attention would sum); reading with q = k returns v2 / sqrt(d), and 0 after writing a zero value."""
    d = 8
    attn = variant(d, h=1, beta_logit=40.0)  # sigmoid(40) = 1 in fp64 to 1e-17
    key = torch.zeros(1, 1, 1, d, dtype=torch.float64)
    key[..., 0] = 1.0
    v1, v2 = torch.randn(2, 1, 1, 1, d, dtype=torch.float64)
    k = torch.cat([key, key, key], dim=2)
    v = torch.cat([v1, v2, torch.zeros_like(v1)], dim=2)
    out = attn(k, k, v, True)
    assert torch.allclose(out[0, 0, 1] * d**0.5, v2[0, 0, 0], atol=1e-6)
    assert out[0, 0, 2].abs().max() < 1e-5  # then a zero value overwrites it (|k|^2 = 1 - 1e-6: eps)


@pytest.mark.parametrize("gated", [False, True], ids=["delta", "gated"])
def test_arbitrary_key_padding_mask(gated: bool) -> None:
    """Padded tokens anywhere neither write (beta 0) nor decay (alpha 1): real rows equal the sequence
    with the padded tokens removed, and naive.py with the mask."""
    attn = variant(16, gated=gated, chunk=8)
    q, k, v = qkv(40, 16, b=1)
    mask = torch.rand(1, 40, generator=torch.Generator().manual_seed(3)) > 0.4
    out = attn(q, k, v, True, key_padding_mask=mask)
    keep = mask[0]
    alone = attn(q[:, :, keep], k[:, :, keep], v[:, :, keep], True)
    assert cf.rel_err(out[:, :, keep], alone) < 1e-12
    ref = naive.reference(attn, q, k, v, True, mask)
    assert cf.rel_err(out[:, :, keep], ref[:, :, keep]) < 1e-12


def test_non_causal_is_refused() -> None:
    reasons = DeltaNetAttention.not_supported_reasons(Problem(1, 2, 64, 32), DeltaNetParams(), "torch")
    assert len(reasons) == 1 and "causal recurrence" in reasons[0]
    q, k, v = qkv(8, 32, dtype=torch.float32)
    with pytest.raises(ValueError, match="non-causal"):
        DeltaNetAttention(DeltaNetParams(), "torch", 2, 32)(q, k, v, False)
    assert not DeltaNetAttention.capabilities.approximates_softmax


def test_parameters_and_initial_decays() -> None:
    """beta_logit (H,) at params.beta_logit; gated: A_log with alpha_h = 1 - 2^(-5 - min(h, 15))."""
    attn = DeltaNetAttention(DeltaNetParams(gated=True, beta_logit=-1.0), "torch", 20, 16)
    assert torch.equal(attn.beta_logit.detach(), torch.full((20,), -1.0))
    alpha = torch.exp(-torch.exp(attn.A_log.detach().double()))
    assert torch.allclose(alpha, retnet_decays(20), rtol=0, atol=1e-7) and torch.isfinite(attn.A_log).all()
    assert alpha[0] == pytest.approx(1 - 2**-5) and alpha[19] == pytest.approx(1 - 2**-20)
    assert DeltaNetAttention(DeltaNetParams(), "torch", 4, 16).A_log is None


@pytest.mark.parametrize("gated", [False, True], ids=["delta", "gated"])
def test_fla_wrapper(monkeypatch: pytest.MonkeyPatch, gated: bool) -> None:
    """impl fla passes normalised q, k, v in (B, N, H, d), beta (B, N, H), g = log alpha (B, N, H) and
    scale 1/sqrt(d) to fla's chunk kernels: a stand-in computing fla's recurrence gives naive.py's result."""
    seen = []

    def kernel(q: Tensor, k: Tensor, v: Tensor, beta: Tensor, scale: float, g: Tensor | None = None):
        seen.append((q.shape, beta.shape, None if g is None else g.shape, scale))
        B, N, H, d = q.shape
        h = torch.zeros(B, H, d, v.shape[-1], dtype=torch.float64)
        out = torch.empty(B, N, H, v.shape[-1], dtype=torch.float64)
        for t in range(N):
            qt, kt, vt, bt = q[:, t].double() * scale, k[:, t].double(), v[:, t].double(), beta[:, t].double()
            h = h * (1.0 if g is None else g[:, t].double().exp()[..., None, None])
            u = bt[..., None] * (vt - (h * kt[..., None]).sum(-2))
            h = h + kt[..., None] * u[..., None, :]
            out[:, t] = (qt[..., None] * h).sum(-2)
        return out.to(v.dtype), None

    module = "fla.ops.gated_delta_rule" if gated else "fla.ops.delta_rule"
    name = "chunk_gated_delta_rule" if gated else "chunk_delta_rule"
    monkeypatch.setitem(sys.modules, module, types.SimpleNamespace(**{name: kernel}))
    torch.manual_seed(0)
    attn = DeltaNetAttention(DeltaNetParams(gated=gated), "fla", 2, 16)
    q, k, v = qkv(30, 16, dtype=torch.float32)
    mask = torch.ones(1, 30, dtype=torch.bool)
    mask[0, 5] = False
    out = cf.call(attn, q, k, v, True, mask)
    assert cf.rel_err(out, naive.reference(attn, q, k, v, True, mask)) < 1e-5
    assert seen == [((1, 30, 2, 16), (1, 30, 2), (1, 30, 2) if gated else None, 16**-0.5)]


@pytest.mark.parametrize("gated", [False, True], ids=["delta", "gated"])
@pytest.mark.parametrize("mode", ["fwd", "fwd_bwd"])
def test_flops_match_counter_at_other_chunks(mode: str, gated: bool) -> None:
    """FlopCounterMode equals the model at chunk 16 and 100 (the contract runs the default 64, ungated)."""
    for n, chunk in ((100, 16), (333, 100)):
        params = DeltaNetParams(gated=gated, chunk=chunk)
        torch.manual_seed(0)
        attn = DeltaNetAttention(params, "torch", 2, 32)
        q, k, v = (x.float().requires_grad_(mode != "fwd") for x in qkv(n, 32))
        with FlopCounterMode(display=False) as counter, torch.set_grad_enabled(mode != "fwd"):
            out = attn(q, k, v, True)
            if mode != "fwd":
                out.sum().backward()
        prob = Problem(1, 2, n, 32, causal=True, mode=mode)
        assert counter.get_total_flops() == DeltaNetAttention.flops(prob, params, "torch", matmul_only=True)


def test_state_bytes() -> None:
    prob = Problem(1, 8, 4096, 64, dtype="bf16", causal=True)
    assert DeltaNetAttention.state_bytes(prob, DeltaNetParams(), "torch") == 8 * 64 * 64 * 4


@pytest.mark.parametrize("gated", [False, True], ids=["delta", "gated"])
def test_trains_in_mqar(gated: bool) -> None:
    """harness/kinds/mqar's TinyLM with deltanet in its slot (causal, fp32, CPU): 30 Adam steps on
    one batch lower the loss, and beta_logit (and A_log) receive gradients and move."""
    cls = DeltaNetAttention
    torch.manual_seed(0)
    model = build_model(cls, DeltaNetParams(gated=gated, chunk=16), "torch", layers=2, vocab=32,
                        max_len=32, heads=2, head_dim=16, shift=True)  # fmt: skip
    tokens, targets = mqar_batch(MQARSpec(32, 32, 4), 8, generator(0))
    own = [p for block in model.blocks for p in block.attn.variant.parameters()]
    assert len(own) == (4 if gated else 2)
    before = [p.detach().clone() for p in own]
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(30):
        loss = masked_loss(model(tokens), targets)
        opt.zero_grad()
        loss.backward()
        assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in own)
        opt.step()
        losses.append(float(loss.detach()))
    assert all(map(lambda x: x == x, losses)) and losses[-1] < 0.8 * losses[0]
    assert all(not torch.equal(a, p.detach()) for a, p in zip(before, own, strict=True))


@pytest.mark.parametrize("value", [{"gated": 1}, {"beta_logit": float("nan")}, {"chunk": 0}, {"chunk": 1.5}])
def test_bad_params_rejected(value: dict) -> None:
    with pytest.raises(ValueError, match="deltanet"):
        DeltaNetAttention.make_params(value)
