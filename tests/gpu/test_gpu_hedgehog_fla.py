"""hedgehog/fla (fla-core's chunk_simple_gla with the running-max decay, see attentions/hedgehog/fla.py) on a
GPU against hedgehog/chunked in fp32 on the same bf16-rounded inputs: forward and the gradients of q, k,
v, W and b, causal, odd lengths, both feature maps, with and without a key-padding mask, and inputs
large enough that exp(W x + b) alone would overflow bf16's products. Not run yet: written without a GPU
(the fla kernels need Triton and CUDA)."""

from __future__ import annotations

import pytest
import torch

from attentions.hedgehog.variant import HedgehogAttention, HedgehogParams

pytestmark = pytest.mark.gpu

TOL = (2e-2, 6e-2)  # bf16 inputs and kernel: output, gradients (the class's bf16 tolerance)
CASES = {  # N, d, feature map, input scale
    "n63-d64-exp": (63, 64, "exp", 1.0),
    "n1000-d64-exp": (1000, 64, "exp", 1.0),
    "n1000-d128-softmax": (1000, 128, "softmax", 1.0),
    "n1000-d64-exp-large": (1000, 64, "exp", 8.0),
}


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    return ((out.double() - ref.double()).norm() / ref.double().norm()).item()


def run(model: HedgehogAttention, q, k, v, mask, bnhd: bool):
    leaves = [q, k, v, model.W, model.b]
    args = [x.transpose(1, 2) for x in (q, k, v)] if bnhd else [q, k, v]
    out = model(*args, True, mask)
    out = out.transpose(1, 2) if bnhd else out
    r = torch.randn(out.shape, generator=torch.Generator().manual_seed(7)).to(out.device)
    real = 1.0 if mask is None else mask[:, None, :, None]
    grads = torch.autograd.grad((out.float() * r * real).sum(), leaves)
    return out.float() * real, grads


@pytest.mark.parametrize("masked", [False, True], ids=["nomask", "mask"])
@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_fla_matches_chunked(case, masked: bool) -> None:
    n, d, form, scale = case
    params = HedgehogParams(feature_map=form)
    torch.manual_seed(0)
    fla = HedgehogAttention(params, "fla", 2, d, "cuda", "bf16").cuda()
    chunked = HedgehogAttention(params, "chunked", 2, d, "cuda", "fp32").cuda()
    with torch.no_grad():
        fla.W.add_(0.2 * torch.randn_like(fla.W))
        fla.b.add_(0.2 * torch.randn_like(fla.b))
    chunked.load_state_dict(fla.state_dict())
    gen = torch.Generator().manual_seed(1)
    qkv = [torch.randn(2, 2, n, d, generator=gen).mul(s).bfloat16().cuda() for s in (scale, scale, 1.0)]
    mask = None
    if masked:
        mask = torch.ones(2, n, dtype=torch.bool, device="cuda")
        mask[1, n // 2 :] = False
    q, k, v = (x.clone().requires_grad_() for x in qkv)
    out, grads = run(fla, q, k, v, mask, bnhd=True)
    q32, k32, v32 = (x.float().requires_grad_() for x in qkv)
    ref, ref_grads = run(chunked, q32, k32, v32, mask, bnhd=False)
    assert torch.isfinite(out).all()
    assert rel_err(out, ref) < TOL[0], f"output rel_err {rel_err(out, ref):.2e}"
    for name, g, rg in zip("q k v W b".split(), grads, ref_grads, strict=True):
        assert rel_err(g, rg) < TOL[1], f"grad of {name}: rel_err {rel_err(g, rg):.2e}"
