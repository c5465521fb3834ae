"""The fused LUNA Triton kernels on a GPU against naive.luna_attention, forward and backward (the
gradients of q, k, v and every parameter), causal and not, at odd lengths (63, 1000) and one long
one, through the autotuned launches (block_n=None: what the variant runs) and explicit tiles.
tests/test_luna_triton.py runs the same comparisons on CPU under Triton's interpreter."""

from __future__ import annotations

import pytest
import torch

from attentions.luna.features import LunaWeights
from attentions.luna.naive import luna_attention
from attentions.luna.triton_configs import candidates
from tests.test_luna_triton import NAMES, make_case, rel_err

pytestmark = pytest.mark.gpu

# fp32 inputs: ieee dots, fp32 everywhere; measured on CPU (interpreter) <= 3e-7 / 1e-5: room for the
# GPU's other summation order. bf16 inputs: the rounding of out, dq, dk, dv (~3e-3 measured on CPU).
TOL = {torch.float32: (1e-5, 1e-4), torch.bfloat16: (1e-2, 1e-2)}
SHAPES = {  # B, H, N, d, m, L, hidden (each shape and dtype compiles every kernel once: few of them)
    "n63-d16-m2L4-fp32": ((2, 1, 63, 16, 2, 4, 8), torch.float32),
    "n1000-d64-m8L8-fp32": ((1, 2, 1000, 64, 8, 8, 64), torch.float32),
    "n1000-d64-m8L8-bf16": ((1, 2, 1000, 64, 8, 8, 64), torch.bfloat16),
    "n4099-d128-m8L16-bf16": ((1, 2, 4099, 128, 8, 16, 32), torch.bfloat16),
}
CAUSAL = pytest.mark.parametrize("causal", [False, True], ids=["noncausal", "causal"])


def out_and_grads(fn, qkv: list[torch.Tensor], weights: list[torch.Tensor]):
    """fn(q, k, v, weights) and the gradients of sum(out * r) (fixed random r on out's device)."""
    out = fn(*qkv, weights)
    r = torch.randn(out.shape, generator=torch.Generator().manual_seed(7)).bfloat16()
    grads = torch.autograd.grad((out * r.to(out.device, out.dtype)).sum(), [*qkv, *weights])
    return out, grads


def compare(shape, shared: bool, causal: bool, dtype: torch.dtype, **kwargs) -> None:
    from attentions.luna.triton_autograd import luna_attention_triton

    qkv, weights = make_case(shape, shared, dtype=dtype)
    qkv = [x.detach().cuda().requires_grad_() for x in qkv]
    weights = [w.detach().cuda().requires_grad_() for w in weights]
    out, grads = out_and_grads(
        lambda q, k, v, w: luna_attention_triton(q, k, v, LunaWeights(*w), causal, **kwargs), qkv, weights
    )
    qkv32 = [x.detach().float().requires_grad_() for x in qkv]
    naive = lambda q, k, v, w: luna_attention(q, k, v, *w, causal=causal)  # noqa: E731
    ref, ref_grads = out_and_grads(naive, qkv32, weights)
    out_tol, grad_tol = TOL[dtype]
    assert out.dtype == dtype and torch.isfinite(out).all()
    assert rel_err(out, ref) < out_tol, f"output rel_err {rel_err(out, ref):.2e}"
    for name, g, gr in zip(["q", "k", "v", *NAMES], grads, ref_grads, strict=True):
        assert rel_err(g, gr) < grad_tol, f"grad of {name}: rel_err {rel_err(g, gr):.2e} >= {grad_tol:g}"


@CAUSAL
@pytest.mark.parametrize("case", SHAPES.values(), ids=SHAPES.keys())
def test_matches_naive(case, causal: bool) -> None:
    """The first autotune candidate of each kernel (tests/gpu/conftest.py turns timing off)."""
    shape, dtype = case
    compare(shape, False, causal, dtype)


@CAUSAL
def test_explicit_tiles_shared_channels(causal: bool) -> None:
    """block_n 16 and 3 programs per head: many blocks per program, the shared-MLP layout."""
    compare((2, 2, 1000, 48, 4, 4, 16), True, causal, torch.float32, block_n=16, splits=3)


def test_autotune_picked_a_candidate(monkeypatch: pytest.MonkeyPatch) -> None:
    """Autotuning on, bf16, d = 64, D = 64 (luna_long's key): forward + backward, causal and not, still
    match naive.py, and each kernel's best config is one of its candidates (key and pruning work)."""
    from attentions.luna import triton_launch as tk

    monkeypatch.setenv(tk.AUTOTUNE_ENV, "1")
    for tuned in tk.TUNED.values():
        tuned.cache.clear()  # keys tuned with one candidate by the tests before
    for causal in (False, True):
        compare(SHAPES["n1000-d64-m8L8-bf16"][0], False, causal, torch.bfloat16)
    for name, tuned in tk.TUNED.items():
        best = tuned.best_config
        got = (best.kwargs["BLOCK_N"], best.num_warps, best.num_stages)
        assert got in candidates(name, 64, 64, "bf16"), f"{name}: {got}"
