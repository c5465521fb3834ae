"""luna impl "compile": the loop-free blocked algorithm (attentions/luna/compiled.py) against naive.py,
run eagerly here (fast), and compiled once (slow: inductor on CPU). The full contract of the impl
runs in tests/test_contract.py under `-m slow`."""

from __future__ import annotations

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from attentions.luna.compiled import compiled_luna, luna_attention_blocked
from attentions.luna.features import LunaWeights, init_luna_params
from attentions.luna.naive import luna_attention
from attentions.luna.variant import LunaAttention, LunaParams
from harness.plugins import conformance as cf


def case(n: int, d: int = 16, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    p = init_luna_params(d, 2, 4, 8, False, generator=gen)
    weights = LunaWeights(*(p[k].requires_grad_() for k in ("W", "b", "w1", "b1", "w2", "b2")))
    qkv = [torch.randn(2, 2, n, d, generator=gen, dtype=torch.float64).requires_grad_() for _ in range(3)]
    return qkv, weights


@pytest.mark.parametrize("causal", [False, True], ids=["noncausal", "causal"])
@pytest.mark.parametrize("n,chunk", [(63, 16), (63, 128), (200, 64), (128, 32)])
def test_blocked_matches_naive(n: int, chunk: int, causal: bool) -> None:
    """Outputs and gradients (q, k, v, weights) in fp64; partial last blocks and N < chunk included."""
    qkv, w = case(n)
    w64 = LunaWeights(*(x.double() for x in w[:6]))
    out = luna_attention_blocked(*qkv, w64, causal, chunk=chunk)
    ref = luna_attention(*qkv, *w64[:6], causal=causal)
    assert cf.rel_err(out, ref) < 1e-12
    r = torch.randn(out.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    grads = torch.autograd.grad((out * r).sum(), [*qkv, *w[:6]])
    ref_grads = torch.autograd.grad((ref * r).sum(), [*qkv, *w[:6]])
    for g, gr in zip(grads, ref_grads, strict=True):
        assert cf.rel_err(g, gr) < 1e-10


def test_blocked_mask_gives_padded_keys_no_weight() -> None:
    (q, k, v), w = case(50)
    w64 = LunaWeights(*(x.double() for x in w[:6]))
    mask = torch.ones(2, 50, dtype=torch.bool)
    mask[1, 30:] = False
    with torch.no_grad():
        out = luna_attention_blocked(q, k, v, w64, True, chunk=16, mask=mask)
        alone = luna_attention_blocked(q[1:, :, :30], k[1:, :, :30], v[1:, :, :30], w64, True, chunk=16)
    assert cf.rel_err(out[1:, :, :30], alone) < 1e-12


def test_flop_counter_sees_the_eager_graph() -> None:
    """Under FlopCounterMode (a TorchDispatchMode, which dynamo cannot trace) the impl runs the same
    function uncompiled and says so in info(); the counted matmuls equal its cost model."""
    prob = cf.problem(333, 32, True, batch=1, heads=1, mode="fwd")
    var = cf.build(LunaAttention, "compile", prob)
    q, k, v = cf.make_qkv(prob)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        var(q, k, v, True)
    assert var.info() == {"compiled": False}
    assert counter.get_total_flops() == LunaAttention.flops(prob, LunaParams(), "compile", matmul_only=True)


@pytest.mark.slow
def test_compiled_matches_eager() -> None:
    """torch.compile (fullgraph, dynamic shapes) of the same function: two lengths, one graph each way."""
    (q, k, v), w = case(63, d=32)
    w32 = LunaWeights(*w[:6])
    for n in (63, 100):
        q32, k32, v32 = (x[:, :, :n].detach().float() for x in (q, k, v))
        with torch.no_grad():
            got = compiled_luna(q32, k32, v32, w32, True, True, 1e-6, 16, None)
            want = luna_attention_blocked(q32, k32, v32, w32, True, chunk=16)
        assert cf.rel_err(got, want) < 1e-5
