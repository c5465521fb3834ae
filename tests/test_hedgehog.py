"""`hedgehog` (Hedgehog, learnable exp feature maps; LoLCATs' window hybrid): chunked vs naive.py,
an independent fp64 formula, stabilizers, causality, fit, cost model, memory, the fla impl's refusals.

Comparisons run in float64 with W, b drawn away from the identity init (W = I + noise, b = noise).
"""

from __future__ import annotations

import math

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode

from attentions.hedgehog.fit import hedgehog_row_weights
from attentions.hedgehog.naive import hedgehog_attention
from attentions.hedgehog.naive import reference as naive_reference
from attentions.hedgehog.variant import HedgehogAttention, HedgehogParams
from harness.plugins.contract import FitSpec, Problem, Teacher

B, H = 1, 2
F64_RTOL = 1e-10


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    return ((out.double() - ref.double()).norm() / ref.double().norm()).item()


def model(d: int = 32, heads: int = H, seed: int = 0, impl: str = "chunked", **params) -> HedgehogAttention:
    """A float64 hedgehog with W = I + 0.3 noise, b = 0.3 noise."""
    torch.manual_seed(seed)
    m = HedgehogAttention(HedgehogParams(**params), impl, heads, d).double()
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        m.W.add_(0.3 * torch.randn(m.W.shape, generator=gen, dtype=m.W.dtype))
        m.b.add_(0.3 * torch.randn(m.b.shape, generator=gen, dtype=m.b.dtype))
        if m.params.window > 0:
            m.log_linear_scale.add_(
                0.5 * torch.randn(m.log_linear_scale.shape, generator=gen, dtype=m.W.dtype)
            )
    return m


def make_qkv(n: int, d: int, seed: int = 0, dtype=torch.float64, batch: int = B) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(batch, H, n, d, generator=gen, dtype=dtype).requires_grad_() for _ in range(3)]


def out_and_grads(fn, m: HedgehogAttention, q, k, v):
    out = fn(q, k, v)
    w = torch.randn(out.shape, generator=torch.Generator().manual_seed(1), dtype=out.dtype)
    grads = torch.autograd.grad((out * w).sum(), [q, k, v, *m.parameters()])
    return out.detach(), grads


def check_same(m: HedgehogAttention, n: int, d: int, causal: bool, mask=None, batch: int = B) -> None:
    """chunked == naive.py, output and the grads of q, k, v, W, b (float64)."""
    q, k, v = make_qkv(n, d, batch=batch)
    real = 1.0 if mask is None else mask[:, None, :, None]
    out, grads = out_and_grads(lambda *x: m(*x, causal, mask) * real, m, q, k, v)
    ref, ref_grads = out_and_grads(lambda *x: naive_reference(m, *x, causal, mask) * real, m, q, k, v)
    assert out.dtype == torch.float64 and out.shape == q.shape
    assert rel_err(out, ref) < F64_RTOL
    names = ["q", "k", "v"] + [name for name, _ in m.named_parameters()]
    for name, g, rg in zip(names, grads, ref_grads, strict=True):
        if m.params.window >= n and name not in "qkv":  # a window over the whole sequence: no feature part
            assert g.norm() == rg.norm() == 0, name
            continue
        assert rg.norm() > 0, f"grad of {name} is zero: the check would be vacuous"
        assert rel_err(g, rg) < F64_RTOL, f"grad of {name}"


# ----- chunked vs naive.py ---------------------------------------------------------------------
@pytest.mark.parametrize("form", ["exp", "softmax"])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize(
    "n,d,window",
    [
        (63, 32, 0),
        (63, 48, 5),
        (63, 128, 0),
        (1000, 48, 64),
        pytest.param(1000, 64, 0, marks=pytest.mark.slow),  # the contract tests run N = 1000, window 0
    ],
)
def test_chunked_matches_naive(n: int, d: int, window: int, causal: bool, form: str) -> None:
    chunk = 16 if n == 63 else 64  # several blocks and a partial last one
    check_same(model(d, feature_map=form, window=window, chunk=chunk, feature_dim=24), n, d, causal)


@pytest.mark.parametrize(
    "causal,params",
    [
        (True, {"window": 1, "chunk": 5}),  # the window is the diagonal only
        (False, {"window": 1, "chunk": 5}),
        (True, {"window": 40, "chunk": 7}),  # window wider than a block: the tile spans several blocks
        (False, {"window": 40, "chunk": 7}),
        (True, {"window": 100, "chunk": 16}),  # window wider than the sequence: exact softmax
        (True, {"chunk": 1}),
        (False, {"window": 3, "chunk": 1000}),  # a single block
        (True, {"feature_dim": 7, "window": 9}),  # F != d: a rectangular identity
    ],
)
def test_chunked_matches_naive_options(causal: bool, params: dict) -> None:
    check_same(model(16, **params), 63, 16, causal)


@pytest.mark.parametrize("form", ["exp", "softmax"])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("window", [0, 6])
def test_key_padding_mask_matches_naive(window: int, causal: bool, form: str) -> None:
    """Padding anywhere (not only on the right): real rows and all grads equal naive.py's with the mask."""
    mask = torch.rand(2, 63, generator=torch.Generator().manual_seed(4)) > 0.3
    mask[:, 0] = True
    check_same(model(16, feature_map=form, window=window, chunk=16), 63, 16, causal, mask, batch=2)


# ----- the definition, against an independent float64 formula -------------------------------------
def direct_formula(q, k, v, W, b, form: str, causal: bool, window: int, beta=None) -> torch.Tensor:
    """Weights written out pair by pair with plain exp (fp64, small inputs): exp(q.k/sqrt(d)) in the window,
    exp(beta_h) sum_f phi_f(q) phi_f(k) outside, each row divided by its sum."""
    q, k, v, W, b = (x.detach().double() for x in (q, k, v, W, b))
    beta = torch.zeros(q.shape[1], dtype=torch.float64) if beta is None else beta.detach().double()
    Bn, Hn, n, d = q.shape
    out = torch.zeros_like(q)
    for bi in range(Bn):
        for h in range(Hn):
            uq, uk = q[bi, h] @ W[h].T + b[h], k[bi, h] @ W[h].T + b[h]
            if form == "exp":
                pq, pk = torch.cat([uq.exp(), (-uq).exp()], -1), torch.cat([uk.exp(), (-uk).exp()], -1)
            else:
                sm = torch.softmax
                pq = torch.cat([sm(uq, -1), sm(-uq, -1)], -1)
                pk = torch.cat([sm(uk, -1), sm(-uk, -1)], -1)
            for i in range(n):
                w = torch.zeros(n, dtype=torch.float64)
                for j in range(n):
                    if causal and j > i:
                        continue
                    near = (i - j < window) if causal else (abs(i - j) < window)
                    exact = math.exp(float(q[bi, h, i] @ k[bi, h, j]) / math.sqrt(d))
                    w[j] = exact if near else math.exp(float(beta[h])) * float(pq[i] @ pk[j])
                out[bi, h, i] = (w / w.sum()) @ v[bi, h]
    return out


@pytest.mark.parametrize("form", ["exp", "softmax"])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("window", [0, 4])
def test_hybrid_equals_direct_formula(window: int, causal: bool, form: str) -> None:
    m = model(8, feature_map=form, window=window, chunk=8)
    q, k, v = (x.detach() for x in make_qkv(29, 8))
    expected = direct_formula(q, k, v, m.W, m.b, form, causal, window, getattr(m, "log_linear_scale", None))
    with torch.no_grad():
        assert rel_err(naive_reference(m, q, k, v, causal), expected) < 1e-12
        assert rel_err(m(q, k, v, causal), expected) < 1e-12
        if window:  # the window changes the function: the test can fail
            assert rel_err(hedgehog_attention(q, k, v, m.W, m.b, form, causal, 0), expected) > 1e-3


def test_window_covering_the_sequence_is_exact_softmax() -> None:
    m = model(16, window=63, chunk=16)
    q, k, v = (x.detach() for x in make_qkv(63, 16))
    with torch.no_grad():
        for causal in (False, True):
            rows = torch.arange(63)
            assert rel_err(m(q, k, v, causal), Teacher(causal).outputs(q, k, v, rows)) < 1e-12


# ----- numerics: the stabilizers ----------------------------------------------------------------
@pytest.mark.parametrize("window", [0, 8])
@pytest.mark.parametrize("causal", [False, True])
def test_large_inputs_stay_finite_and_accurate(causal: bool, window: int) -> None:
    """|W x + b| reaches ~107 (exp(u_q + u_k) overflows fp32 past 88): fp32 chunked stays finite and
    equals fp64 naive.py."""
    m = model(16, window=window, chunk=16).float()
    q, k, v = (x.detach().float() for x in make_qkv(63, 16))
    q, k = q * 20, k * 20
    with torch.no_grad():
        out = m(q, k, v, causal)
        ref = naive_reference(m.double(), q.double(), k.double(), v.double(), causal)
    assert torch.isfinite(out).all()
    assert rel_err(out, ref) < 1e-4


@pytest.mark.parametrize("window", [0, 5])
def test_causal_outputs_are_bitwise_independent_of_the_future(window: int) -> None:
    """Future tokens 50x larger (new running maxima of the key scales) leave rows 0..t bit-identical:
    every stabilizer a row uses comes from its visible keys."""
    m = model(16, window=window, chunk=16).float()
    q, k, v = (x.detach().float() for x in make_qkv(63, 16))
    t = 40  # inside a block: the intra-block mask matters
    q2, k2, v2 = (torch.cat([x[:, :, : t + 1], 50 * x[:, :, t + 1 :]], dim=2) for x in (q, k, v))
    with torch.no_grad():
        a, b = m(q, k, v, True), m(q2, k2, v2, True)
    assert torch.equal(a[:, :, : t + 1], b[:, :, : t + 1])
    assert not torch.allclose(a[:, :, t + 1 :], b[:, :, t + 1 :])


def test_low_precision_inputs() -> None:
    m = model(32, window=8).float()
    q, k, v = (x.detach().float() for x in make_qkv(63, 32))
    with torch.no_grad():
        out = m(*(x.bfloat16() for x in (q, k, v)), True)
        ref = m(*(x.bfloat16().float() for x in (q, k, v)), True)
    assert out.dtype == torch.bfloat16 and rel_err(out, ref) < 1e-2


class _LargestOutput(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor):
                self.largest = max(self.largest, t.numel())
        return out


@pytest.mark.parametrize("causal", [False, True])
def test_memory_is_linear_in_n(causal: bool) -> None:
    """Forward + backward of chunked (window 16, chunk 32) never creates a tensor near N x N per head."""
    n, d = 400, 16
    m = model(d, window=16, chunk=32).float()
    q, k, v = (x.detach().float().requires_grad_() for x in make_qkv(n, d))
    with _LargestOutput() as mode:
        m(q, k, v, causal).sum().backward()
    per_token = max(2 * d * H, 32 + 16)  # features (B, H, N, 2F) vs one tile row (C + W - 1) per head
    assert mode.largest <= B * H * n * per_token < B * H * n * n / 5


# ----- fit ---------------------------------------------------------------------------------------
def clustered_qkv(seed: int, n: int = 128, d: int = 16, clusters: int = 4) -> tuple[torch.Tensor, ...]:
    """q, k, v near a few fixed per-head centres (a token's key and value share one): softmax attention
    with structure shared by calibration and held-out draws."""
    centres = torch.randn(H, clusters, d, generator=torch.Generator().manual_seed(123))
    centres = centres / centres.norm(dim=-1, keepdim=True) * 2 * d**0.25
    gen = torch.Generator().manual_seed(seed)

    def near(z: torch.Tensor) -> torch.Tensor:
        base = centres.expand(B, H, clusters, d).gather(2, z[..., None].expand(B, H, n, d))
        return base + 0.5 * torch.randn(B, H, n, d, generator=gen)

    zq, zk = (torch.randint(clusters, (B, H, n), generator=gen) for _ in range(2))
    return near(zq), near(zk), near(zk)


def softmax_rel_err(m: HedgehogAttention, qkv, causal: bool) -> float:
    q, k, v = qkv
    with torch.no_grad():
        return rel_err(m(q, k, v, causal), Teacher(causal).outputs(q, k, v, torch.arange(q.shape[-2])))


def fresh(causal: bool, **params) -> HedgehogAttention:
    torch.manual_seed(0)
    return HedgehogAttention(HedgehogParams(**params), "chunked", H, 16)


@pytest.mark.parametrize(
    "causal,params", [(False, {}), (True, {}), (True, {"window": 16}), (False, {"feature_map": "softmax"})]
)
def test_fit_lowers_held_out_error(causal: bool, params: dict) -> None:
    spec = FitSpec(steps=30, lr=5e-2, rows=64, seed=7)
    held_out = clustered_qkv(99)
    unfitted, fitted = fresh(causal, **params), fresh(causal, **params)
    result = fitted.fit([clustered_qkv(1), clustered_qkv(2)], Teacher(causal), spec)
    before, after = softmax_rel_err(unfitted, held_out, causal), softmax_rel_err(fitted, held_out, causal)
    assert after < 0.8 * before, (before, after)
    assert len(result.losses) == spec.steps and result.losses[-1] < result.losses[0]


def test_fit_is_deterministic_and_trains_the_forward() -> None:
    spec = FitSpec(steps=3, lr=1e-2, rows=16, seed=3, mse_weight=0.5)
    a, b = fresh(True, window=8), fresh(True, window=8)
    qkv = clustered_qkv(1, n=64)
    la, lb = (x.fit([qkv], Teacher(True), spec).losses for x in (a, b))
    assert la == lb and torch.equal(a.W, b.W) and torch.equal(a.b, b.b)
    q, k, v = qkv
    rows = torch.tensor([0, 5, 31, 63])
    with torch.no_grad():
        weights = hedgehog_row_weights(q, k, a.W, a.b, "exp", rows, True, 8, a.log_linear_scale)
        assert rel_err(weights @ v, a(q, k, v, True)[:, :, rows]) < 1e-5, "fit trains the forward's weights"
        assert torch.allclose(weights.sum(-1), torch.ones(()), atol=1e-6)


# ----- description, cost model ---------------------------------------------------------------------
@pytest.mark.parametrize(
    "bad", [{"feature_dim": 0}, {"window": -1}, {"chunk": 0}, {"feature_map": "relu"}, {"window": 1.5}]
)
def test_params_are_validated(bad: dict) -> None:
    with pytest.raises(ValueError):
        HedgehogParams(**bad)


def test_feature_dim_and_state_bytes() -> None:
    prob = Problem(batch=1, heads=4, seq_len=1024, head_dim=64, dtype="bf16")
    assert HedgehogAttention.feature_dim(prob, HedgehogParams()) == 128
    assert HedgehogAttention.feature_dim(prob, HedgehogParams(feature_dim=16)) == 32
    assert HedgehogAttention.state_bytes(prob, HedgehogParams(), "chunked") == 4 * (128 * 64 + 128) * 4
    with_window = HedgehogAttention.state_bytes(prob, HedgehogParams(window=64), "chunked")
    assert with_window == 4 * ((128 * 64 + 128) * 4 + 2 * 64 * 64 * 2)


@pytest.mark.parametrize("form", ["exp", "softmax"])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("window", [0, 1, 20, 150])
def test_flops_match_flop_counter(window: int, causal: bool, form: str) -> None:
    """FlopCounterMode == the model's matmul terms, fwd and fwd + bwd, N = 201 (partial last block)."""
    n, d = 201, 24
    params = HedgehogParams(feature_map=form, window=window, chunk=32, feature_dim=20)
    m = HedgehogAttention(params, "chunked", 1, d)
    for mode in ("fwd", "fwd_bwd"):
        q, k, v = (torch.randn(1, 1, n, d, requires_grad=mode == "fwd_bwd") for _ in range(3))
        with FlopCounterMode(display=False) as counter, torch.set_grad_enabled(mode == "fwd_bwd"):
            out = m(q, k, v, causal)
            if mode == "fwd_bwd":
                out.sum().backward()
        prob = Problem(batch=1, heads=1, seq_len=n, head_dim=d, causal=causal, mode=mode)
        assert counter.get_total_flops() == HedgehogAttention.flops(prob, params, "chunked", matmul_only=True)


def test_fla_refusals_are_readable() -> None:
    prob = Problem(batch=1, heads=2, seq_len=64, head_dim=64, dtype="bf16", device="cuda", causal=True)
    reasons = HedgehogAttention.not_supported_reasons(prob, HedgehogParams(window=16), "fla")
    assert any("window" in r and "hedgehog/fla" in r for r in reasons)
    noncausal = HedgehogAttention.not_supported_reasons(
        Problem(1, 2, 64, 64, dtype="bf16", device="cuda"), HedgehogParams(), "fla"
    )
    assert any("causal only" in r for r in noncausal)
    cpu = HedgehogAttention.not_supported_reasons(Problem(1, 2, 64, 64, causal=True), HedgehogParams(), "fla")
    assert any("does not run on cpu" in r for r in cpu)
    m = HedgehogAttention(HedgehogParams(window=4), "fla", 2, 64)
    q = torch.randn(1, 64, 2, 64)
    with pytest.raises(ValueError, match="window"):
        m(q, q, q, True)
