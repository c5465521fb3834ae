"""`luna` (LUNA, learnable-kernel linear attention): naive vs chunked, features, causality, fit, costs.

Comparisons run in float64 (the variant's parameters cast with `.double()`), with parameters drawn
away from their init so that most features are non-zero (at init, small configs have many
all-zero feature rows, which would make agreement checks nearly vacuous).
"""

from __future__ import annotations

import math

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode

from attentions.luna.cost_model import luna_flop_terms
from attentions.luna.features import channels_at_zero
from attentions.luna.fit import distill_loss, luna_row_weights
from attentions.luna.naive import channel_rms, luna_attention, luna_features
from attentions.luna.naive import reference as naive_reference
from attentions.luna.variant import CH_RMS_CAUSAL_REASON, LunaAttention, LunaParams
from harness.plugins.contract import FitSpec, Problem, Teacher
from tests.shapes import HEAD_DIMS, SEQ_LENS

B, H = 1, 2
SMALL = {"m": 4, "L": 3, "hidden": 8}  # keeps the float64 products over N = 1000 fast
F64_RTOL = 1e-10


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    return ((out.double() - ref.double()).norm() / ref.double().norm()).item()


def problem(n: int = 63, d: int = 32, causal: bool = False, mode: str = "fwd", heads: int = H) -> Problem:
    return Problem(batch=B, heads=heads, seq_len=n, head_dim=d, causal=causal, mode=mode)


def luna(params: LunaParams, impl: str, prob: Problem) -> LunaAttention:
    """The variant for problem `prob` (its heads and head dim), as the runner builds it."""
    return LunaAttention(params, impl, prob.heads, prob.head_dim, prob.device, prob.dtype)


def randomize_(model: LunaAttention, seed: int = 0) -> LunaAttention:
    """Draw every parameter so that roughly half the features are positive, in place."""
    gen = torch.Generator().manual_seed(seed)
    d, hidden = model.W.shape[1], model.w2.shape[1]
    scales = {"W": d**-0.5, "b": 0.5, "w1": 1.0, "b1": 1.0, "w2": hidden**-0.5, "b2": 0.1}
    scales |= {"env_a": 0.3 * d**-0.5, "env_c": 0.5, "log_linear_scale": 0.5}
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(scales[name] * torch.randn(p.shape, generator=gen, dtype=p.dtype))
            if name == "b2":
                p.add_(0.1)
    return model


def make_pair(n: int, d: int, causal: bool, **params) -> tuple[LunaAttention, LunaAttention]:
    """naive and chunked float64 modules holding the same (randomized) parameters."""
    p = LunaParams(**params)
    naive = randomize_(luna(p, "naive", problem(n, d, causal)).double())
    chunked = luna(p, "chunked", problem(n, d, causal)).double()
    chunked.load_state_dict(naive.state_dict())
    return naive, chunked


def make_qkv(n: int, d: int, seed: int = 0, dtype: torch.dtype = torch.float64) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(B, H, n, d, generator=gen, dtype=dtype).requires_grad_() for _ in range(3)]


def out_and_grads(
    model: LunaAttention, q, k, v, causal: bool
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Output and grads of q, k, v and every parameter for sum(out * w), w fixed and random."""
    out = model(q, k, v, causal)
    w = torch.randn(out.shape, generator=torch.Generator().manual_seed(1), dtype=out.dtype)
    names = ["q", "k", "v"] + [name for name, _ in model.named_parameters()]
    grads = torch.autograd.grad((out * w).sum(), [q, k, v, *model.parameters()])
    return out.detach(), dict(zip(names, grads, strict=True))


def check_same_function(naive: LunaAttention, chunked: LunaAttention, n: int, d: int, causal: bool) -> None:
    """Same output and same grads of q, k, v and of every parameter, in float64."""
    q, k, v = make_qkv(n, d)
    ref, ref_grads = out_and_grads(naive, q, k, v, causal)
    out, grads = out_and_grads(chunked, q, k, v, causal)
    assert out.shape == q.shape and out.dtype == torch.float64
    assert ref.abs().amax(-1).gt(0).float().mean() > 0.9, "most output rows must be non-zero"
    assert rel_err(out, ref) < F64_RTOL
    assert grads.keys() == ref_grads.keys()
    for name, g in grads.items():
        assert ref_grads[name].norm() > 0, f"grad of {name} is zero: the check would be vacuous"
        assert rel_err(g, ref_grads[name]) < F64_RTOL, f"grad of {name}"


# ----- naive vs chunked: the same function, forward and backward ------------------------------
@pytest.mark.sampled(6)  # of 32
@pytest.mark.parametrize("shared", [False, True])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("d", HEAD_DIMS)
@pytest.mark.parametrize("n", SEQ_LENS)
def test_chunked_matches_naive(n: int, d: int, causal: bool, shared: bool) -> None:
    chunk = 16 if n == 63 else 128  # several blocks and a partial last one in both cases
    naive, chunked = make_pair(n, d, causal, shared_channels=shared, envelope="learned", chunk=chunk, **SMALL)
    check_same_function(naive, chunked, n, d, causal)


@pytest.mark.parametrize(
    "causal,params",
    [
        (False, {"envelope": "none", "ch_rms": True}),
        (False, {"envelope": "learned", "ch_rms": True, "shared_channels": True}),
        (False, {"nonneg": False, "envelope": "none"}),
        (True, {"nonneg": False, "envelope": "learned"}),
        (False, {"chunk": 5}),
        (True, {"chunk": 5}),
        (True, {"chunk": 1000}),  # a single block
    ],
)
def test_chunked_matches_naive_options(causal: bool, params: dict) -> None:
    naive, chunked = make_pair(63, 48, causal, **(SMALL | params))
    check_same_function(naive, chunked, 63, 48, causal)


@pytest.mark.parametrize(
    "causal,params",
    [
        (False, {"ch_rms": True, "envelope": "learned", "chunk": 16}),
        (False, {"shared_channels": True, "chunk": 16}),
        (True, {"envelope": "learned", "chunk": 16}),
    ],
)
def test_key_padding_mask_matches_reference(causal: bool, params: dict) -> None:
    """Padding anywhere (float64): naive and chunked equal naive.py's reference with the mask at the
    real rows, with the gradients of q, k, v and every parameter; ch_rms pools over real tokens only."""
    n, d = 63, 32
    mask = torch.rand(B, n, generator=torch.Generator().manual_seed(4)) > 0.3
    mask[:, 0] = True
    real = mask[:, None, :, None]
    for model in make_pair(n, d, causal, **(SMALL | params)):
        q, k, v = make_qkv(n, d)
        w = torch.randn(q.shape, generator=torch.Generator().manual_seed(1), dtype=q.dtype) * real
        leaves = [q, k, v, *model.parameters()]
        out = model(q, k, v, causal, key_padding_mask=mask)
        ref = naive_reference(model, q, k, v, causal, key_padding_mask=mask)
        grads = torch.autograd.grad((out * w).sum(), leaves)
        ref_grads = torch.autograd.grad((ref * w).sum(), leaves)
        assert rel_err(out * real, ref * real) < F64_RTOL, model.impl
        for i, (g, rg) in enumerate(zip(grads, ref_grads, strict=True)):
            assert rel_err(g, rg) < F64_RTOL, f"{model.impl}: grad of leaf {i}"


@pytest.mark.parametrize("causal", [False, True])
def test_chunked_matches_naive_paper_config(causal: bool) -> None:
    """The defaults (m = L = 8, hidden = 64, L separate channel MLPs) with the learned envelope."""
    naive, chunked = make_pair(63, 64, causal, envelope="learned", chunk=16)
    check_same_function(naive, chunked, 63, 64, causal)


class _LargestOutput(TorchDispatchMode):
    """Records the largest number of elements of any op output (forward and backward)."""

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
def test_chunked_never_holds_all_mlp_activations(causal: bool) -> None:
    """Forward + backward of chunked never creates a tensor the size of B*H*N*m*L*hidden; naive does."""
    n, d, chunk, m, L, hidden = 600, 16, 64, 4, 4, 8
    naive, chunked = make_pair(n, d, causal, m=m, L=L, hidden=hidden, chunk=chunk)
    all_activations = B * H * n * m * L * hidden  # per-channel layout: (B, H, N, m, L, hidden)
    sizes = {}
    for name, model in (("naive", naive), ("chunked", chunked)):
        q, k, v = make_qkv(n, d)
        with _LargestOutput() as mode:
            model(q, k, v, causal).sum().backward()
        sizes[name] = mode.largest
    assert sizes["naive"] >= all_activations
    one_block, io = B * H * chunk * m * L * hidden, B * H * n * d  # io: q, k, v, out and their grads
    assert sizes["chunked"] <= max(one_block, io) < all_activations / 4


# ----- features, weights, causality -----------------------------------------------------------
def dead_channels(model: LunaAttention, scale: float, seed: int = 0) -> int:
    """Feature channels that are zero for every token of q = scale * N(0, 1) (B 4, H 2, N 32, d 16)."""
    q = scale * torch.randn(4, 2, 32, 16, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        phi = luna_features(q, *model.weights()[:6], nonneg=True)
    return int((phi.amax(dim=(0, 1, 2)) == 0).sum())


@pytest.mark.parametrize("shared", [False, True])
def test_alive_init_leaves_no_channel_dead(shared: bool) -> None:
    """Near-zero inputs (the q, k of a freshly initialized model: std ~0.1) put every u_i near 0, so
    channel l is zero for every token when its output at u = 0 is negative: the default init leaves
    about half the channels dead, all of them for some seeds. `alive_init` keeps every draw but b2."""
    params = {"m": 2, "L": 4, "hidden": 16, "shared_channels": shared}
    dead, all_dead = [], 0
    for seed in range(12):
        torch.manual_seed(seed)
        default = luna(LunaParams(**params), "naive", problem(d=16))
        torch.manual_seed(seed)
        alive = luna(LunaParams(alive_init=True, **params), "naive", problem(d=16))
        w0, w1 = default.weights(), alive.weights()
        for name in ("W", "b", "w1", "b1", "w2"):
            assert torch.equal(getattr(w0, name), getattr(w1, name)), name
        at_zero = channels_at_zero(w0.b1, w0.w2, w0.b2)
        raised = w1.b2 - w0.b2
        assert (raised >= 0).all() and torch.equal(raised > 0, at_zero < 16**-0.5)
        assert (channels_at_zero(w1.b1, w1.w2, w1.b2) >= 16**-0.5 - 1e-6).all()
        n_dead = dead_channels(default, 0.1, seed)
        # dead where psi_l(0) < 0 (2 features per channel: m = 2), up to channels within reach of 0
        assert 2 * int((at_zero < -0.1).sum()) <= n_dead <= 2 * int((at_zero < 0).sum()), (n_dead, at_zero)
        dead.append(n_dead)
        all_dead += n_dead == 8
        assert dead_channels(alive, 0.1, seed) == 0
    # the old behaviour, measured: a third or more of the features dead; with one shared MLP
    # (mqar_cpu.yaml's LUNA) seed 0 kills all of them, so the attention outputs 0 / eps = 0
    assert sum(dead) >= 0.3 * 8 * len(dead) and (all_dead >= 1 or not shared), dead


@pytest.mark.parametrize("shared", [False, True])
@pytest.mark.parametrize("envelope", ["none", "learned"])
def test_nonneg_features_and_weights(shared: bool, envelope: str) -> None:
    model = randomize_(luna(LunaParams(shared_channels=shared, envelope=envelope), "naive", problem()))
    q, k, _ = make_qkv(63, 32, dtype=torch.float32)
    w = model.weights()
    phi_q = luna_features(q, *w[:6], nonneg=True, env_a=w.env_a, env_c=w.env_c)
    phi_k = luna_features(k, *w[:6], nonneg=True, env_a=w.env_a, env_c=w.env_c)
    assert phi_q.shape == (B, H, 63, 64)
    assert (phi_q >= 0).all() and (phi_k >= 0).all() and (phi_q > 0).any()
    for causal in (False, True):
        weights = luna_row_weights(phi_q, phi_k, torch.arange(63), causal, 1e-6)
        assert (weights >= 0).all() and (weights.sum(-1) <= 1 + 1e-6).all()
    signed = luna_features(q, *w[:6], nonneg=False, env_a=w.env_a, env_c=w.env_c)
    assert (signed < 0).any(), "without the final ReLU features do go negative: the check above can fail"


@pytest.mark.parametrize("impl", ["naive", "chunked"])
def test_causal_outputs_ignore_the_future(impl: str) -> None:
    n, t0 = 63, 40  # t0 sits inside a 16-token block: the intra-block mask matters
    model = luna(LunaParams(chunk=16, envelope="learned", **SMALL), impl, problem(n, 32, True))
    model = randomize_(model.double())
    q, k, v = (x.detach() for x in make_qkv(n, 32))
    k2, v2 = k.clone(), v.clone()
    k2[:, :, t0 + 1 :] += 3.0 * torch.randn_like(k2[:, :, t0 + 1 :])
    v2[:, :, t0 + 1 :] += 3.0 * torch.randn_like(v2[:, :, t0 + 1 :])
    with torch.no_grad():
        base, moved = model(q, k, v, True), model(q, k2, v2, True)
        non_causal = model(q, k2, v2, False)
    assert (base[:, :, : t0 + 1] - moved[:, :, : t0 + 1]).abs().max() < 1e-12
    assert (base[:, :, t0 + 1 :] - moved[:, :, t0 + 1 :]).abs().max() > 1e-3
    assert (non_causal[:, :, : t0 + 1] - base[:, :, : t0 + 1]).abs().max() > 1e-3


def test_ch_rms_refused_in_causal_mode() -> None:
    params = LunaParams(ch_rms=True)
    for impl in ("naive", "chunked"):
        assert CH_RMS_CAUSAL_REASON in LunaAttention.not_supported_reasons(problem(causal=True), params, impl)
        assert LunaAttention.not_supported_reasons(problem(causal=False), params, impl) == []
    assert "causal" in CH_RMS_CAUSAL_REASON and "all tokens" in CH_RMS_CAUSAL_REASON
    q, k, v = make_qkv(63, 32, dtype=torch.float32)
    for impl in ("naive", "chunked"):
        with pytest.raises(ValueError, match="causal"):
            luna(params, impl, problem(causal=True))(q, k, v, True)
    w = luna(params, "naive", problem()).weights()
    with pytest.raises(ValueError, match="causal"):
        luna_attention(q, k, v, *w[:6], causal=True, ch_rms=True)


def test_ch_rms_is_per_sequence_not_per_batch() -> None:
    """The channel RMS pools over tokens of one (batch, head), so batch elements stay independent."""
    model = randomize_(luna(LunaParams(ch_rms=True, **SMALL), "chunked", problem()).double())
    q, k, v = (x.detach() for x in make_qkv(63, 32))
    q2, k2, v2 = (torch.cat([x, torch.randn_like(x)], dim=0) for x in (q, k, v))
    with torch.no_grad():
        assert rel_err(model(q2, k2, v2, False)[:1], model(q, k, v, False)) < 1e-12


@pytest.mark.parametrize(
    "bad",
    [
        {"m": 0},
        {"L": 1.5},
        {"hidden": True},
        {"envelope": "gated"},
        {"eps": 0.0},
        {"chunk": 0},
        {"nonneg": 1},
        {"alive_init": "yes"},
    ],
)
def test_params_are_validated(bad: dict) -> None:
    with pytest.raises(ValueError):
        LunaParams(**bad)
    assert LunaAttention.feature_dim(problem(), LunaParams(m=4, L=3)) == 12


@pytest.mark.parametrize("impl", ["naive", "chunked"])
def test_low_precision_inputs(impl: str) -> None:
    """bf16 inputs are computed in fp32 and returned in bf16."""
    model = randomize_(luna(LunaParams(**SMALL), impl, problem(causal=True)))
    q, k, v = (x.detach() for x in make_qkv(63, 32, dtype=torch.float32))
    with torch.no_grad():
        out = model(*(x.bfloat16() for x in (q, k, v)), True)
        ref = model(*(x.bfloat16().float() for x in (q, k, v)), True)
    assert out.dtype == torch.bfloat16 and rel_err(out, ref) < 1e-2


# ----- fit ------------------------------------------------------------------------------------
def clustered_qkv(seed: int, n: int = 128, d: int = 32, clusters: int = 4) -> tuple[torch.Tensor, ...]:
    """q, k, v near a few fixed per-head centres (keys and values of a token share one): a
    distribution with structure shared by calibration and held-out draws, as in real layers."""
    centres = torch.randn(H, clusters, d, generator=torch.Generator().manual_seed(123))
    centres = centres / centres.norm(dim=-1, keepdim=True) * 2 * d**0.25  # |c|^2 / sqrt(d) = 4
    gen = torch.Generator().manual_seed(seed)

    def near(z: torch.Tensor) -> torch.Tensor:
        return centres.expand(B, H, clusters, d).gather(
            2, z[..., None].expand(B, H, n, d)
        ) + 0.5 * torch.randn(B, H, n, d, generator=gen)

    zq, zk = (torch.randint(clusters, (B, H, n), generator=gen) for _ in range(2))
    return near(zq), near(zk), near(zk)


def softmax_rel_err(model: LunaAttention, qkv: tuple[torch.Tensor, ...], causal: bool) -> float:
    q, k, v = qkv
    with torch.no_grad():
        return rel_err(model(q, k, v, causal), Teacher(causal).outputs(q, k, v, torch.arange(q.shape[-2])))


def fitted(causal: bool, spec: FitSpec, **params) -> tuple[LunaAttention, list[float]]:
    torch.manual_seed(0)
    model = luna(LunaParams(**params), "chunked", problem(128, 32, causal))
    result = model.fit([clustered_qkv(1), clustered_qkv(2)], Teacher(causal), spec)
    return model, result.losses


@pytest.mark.parametrize("causal", [False, True])
def test_fit_lowers_held_out_error(causal: bool) -> None:
    spec = FitSpec(steps=20, lr=5e-2, rows=64, seed=7)
    held_out = clustered_qkv(99)
    torch.manual_seed(0)
    unfitted = luna(LunaParams(m=4, L=4, hidden=16), "chunked", problem(128, 32, causal))
    model, losses = fitted(causal, spec, m=4, L=4, hidden=16)
    before, after = softmax_rel_err(unfitted, held_out, causal), softmax_rel_err(model, held_out, causal)
    assert after < 0.9 * before, (before, after)
    assert len(losses) == spec.steps and losses[-1] < losses[0]


def test_fit_is_deterministic() -> None:
    spec = FitSpec(steps=4, lr=1e-2, rows=32, seed=3)
    (a, losses_a), (b, losses_b) = (fitted(True, spec, envelope="learned", **SMALL) for _ in range(2))
    assert losses_a == losses_b
    for (name, pa), pb in zip(a.named_parameters(), b.parameters(), strict=True):
        assert torch.equal(pa, pb), name
    c, _ = fitted(True, FitSpec(steps=4, lr=1e-2, rows=32, seed=4), envelope="learned", **SMALL)
    assert not torch.equal(a.W, c.W), "another seed samples other rows"


@pytest.mark.parametrize("causal,ch_rms", [(False, False), (False, True), (True, False)])
def test_fit_objective(causal: bool, ch_rms: bool) -> None:
    """The first loss of fit is the documented KL + mse_weight * MSE on LUNA's own forward weights."""
    spec = FitSpec(steps=1, lr=1e-2, rows=16, seed=5, mse_weight=0.5)
    torch.manual_seed(0)
    model = luna(LunaParams(ch_rms=ch_rms, **SMALL), "naive", problem(64, 32, causal))
    randomize_(model)
    q, k, v = clustered_qkv(1, n=64)
    rows = torch.randperm(64, generator=torch.Generator().manual_seed(spec.seed))[: spec.rows].sort().values
    with torch.no_grad():
        target = Teacher(causal).weights(q, k, rows)
        w = model.weights()
        phi_q, phi_k = (luna_features(x, *w[:6]) for x in (q, k))
        if ch_rms:
            phi_q, phi_k = channel_rms(phi_q, 1e-6), channel_rms(phi_k, 1e-6)
        weights = luna_row_weights(phi_q[:, :, rows], phi_k, rows, causal, 1e-6)
        assert rel_err(weights @ v, model(q, k, v, causal)[:, :, rows]) < 1e-5, "fit trains the forward"
        kl = (target * (target.clamp_min(1e-30).log() - (weights + 1e-9).log())).sum(-1).mean()
        expected = kl + spec.mse_weight * (weights @ v - target @ v).pow(2).mean()
        loss, kl_only = distill_loss(weights, target, v, spec.mse_weight)
    assert math.isclose(kl_only.item(), kl.item(), rel_tol=1e-5)
    assert math.isclose(loss.item(), expected.item(), rel_tol=1e-5)
    assert math.isclose(
        model.fit([(q, k, v)], Teacher(causal), spec).losses[0], expected.item(), rel_tol=1e-5
    )


# ----- cost model -----------------------------------------------------------------------------
@pytest.mark.parametrize("impl", ["naive", "chunked"])
@pytest.mark.parametrize("envelope", ["none", "learned"])
@pytest.mark.parametrize("shared", [False, True])
@pytest.mark.parametrize("causal", [False, True])
def test_flops_match_flop_counter(causal: bool, shared: bool, envelope: str, impl: str) -> None:
    """FlopCounterMode counts exactly the "*_matmul" terms of `luna_flop_terms`, forward and forward +
    backward: naive 2x backward; chunked adds the checkpoint's recomputation of each block (phi and
    the products feeding its outputs). N = 200, chunk 64: a partial last block."""
    n, d = 200, 48
    params = LunaParams(shared_channels=shared, envelope=envelope, chunk=64, **SMALL)
    model = luna(params, impl, problem(n, d, causal))
    for mode in ("fwd", "fwd_bwd"):
        prob = problem(n, d, causal, mode)
        q, k, v = make_qkv(n, d, dtype=torch.float32)
        with FlopCounterMode(display=False) as counter, torch.set_grad_enabled(mode == "fwd_bwd"):
            out = model(q, k, v, causal)
            if mode == "fwd_bwd":
                out.sum().backward()
        terms = luna_flop_terms(prob, params, impl)
        matmuls = sum(value for key, value in terms.items() if key.endswith("_matmul"))
        assert (
            counter.get_total_flops() == matmuls == LunaAttention.flops(prob, params, impl, matmul_only=True)
        )
        assert terms["mlp_elementwise"] > 0 and (terms["envelope_matvec"] > 0) == (envelope == "learned")
        assert LunaAttention.flops(prob, params, impl) == sum(terms.values())
    ratio = LunaAttention.flops(problem(n, d, causal, "fwd_bwd"), params, impl) / LunaAttention.flops(
        problem(n, d, causal), params, impl
    )
    assert ratio == pytest.approx(3.0) if impl == "naive" else 3.3 < ratio < 4.0


def test_bytes_moved_counts_io_and_parameters() -> None:
    params = LunaParams()
    prob = problem(1000, 64)
    io = 4 * B * H * 1000 * 64 * 4
    n_params = sum(p.numel() for p in luna(params, "naive", prob).parameters())
    assert LunaAttention.bytes_moved(prob, params, "chunked") == io + 4 * n_params
    assert (
        LunaAttention.bytes_moved(problem(1000, 64, mode="fwd_bwd"), params, "chunked")
        == 3 * io + 12 * n_params
    )
