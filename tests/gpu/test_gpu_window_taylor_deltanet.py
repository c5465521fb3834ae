"""The CUDA impls of `window` (flash_attn), `taylor` (fla, fla_parallel) and `deltanet` (fla) against
the same variant's torch impl in fp32 on CUDA, on the same rounded inputs: outputs and the gradients
of q, k, v (and deltanet's beta_logit, A_log) at the class's tolerance for the dtype. Configurations
the registry-wide tests/gpu/test_gpu_contract.py does not reach with default params are here
(taylor's fused kernel needs proj_dim <= 16; windows shorter than N; the gated delta rule)."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from harness.plugins import conformance as cf
from harness.plugins.variants import VARIANTS

pytestmark = pytest.mark.gpu

DEVICE = "cuda"
CASES = [  # name, params, impl, causal values
    ("window", {"window": 64}, "flash_attn", (False, True)),
    ("window", {"window": 1}, "flash_attn", (False, True)),
    ("taylor", {"proj_dim": 16}, "fla", (True,)),
    ("taylor", {"proj_dim": 0}, "fla_parallel", (True,)),
    ("taylor", {"proj_dim": 16}, "fla_parallel", (True,)),
    ("deltanet", {"gated": False}, "fla", (True,)),
    ("deltanet", {"gated": True}, "fla", (True,)),
]
PARAMS = [
    pytest.param(
        name, params, impl, causal, id=f"{name}-{impl}-{'-'.join(map(str, params.values()))}-{causal}"
    )
    for name, params, impl, causals in CASES
    for causal in causals
]


@pytest.mark.parametrize("n,d", [(63, 64), (1000, 64), (257, 32)])
@pytest.mark.parametrize("name,params,impl,causal", PARAMS)
def test_cuda_impl_matches_torch_impl(
    name: str, params: dict[str, Any], impl: str, causal: bool, n: int, d: int
) -> None:
    cls = VARIANTS.get(name)
    p = cls.make_params(params)
    masked = name == "deltanet"  # its fla impl takes the mask through beta and the gate
    prob = cf.problem(n, d, causal, dtype="bf16", device=DEVICE, batch=2, heads=2, masked=masked)
    if reasons := cls.not_supported_reasons(prob, p, impl):
        pytest.skip("; ".join(reasons))
    torch.manual_seed(0)
    fast = cls(p, impl, 2, d, DEVICE, "bf16").to(DEVICE)
    torch.manual_seed(0)
    ref = cls(p, "torch", 2, d, DEVICE, "fp32").to(DEVICE)
    mask = None
    if masked:
        mask = torch.rand(2, n, generator=torch.Generator().manual_seed(3)) > 0.2
        mask = mask.to(DEVICE)
    q, k, v = cf.make_qkv(prob, requires_grad=True)
    q32, k32, v32 = (x.detach().float().requires_grad_() for x in (q, k, v))
    own = [x for x in fast.parameters() if x.requires_grad]
    own32 = [x for x in ref.parameters() if x.requires_grad]
    out = cf.outputs_and_grads(lambda *x: cf.call(fast, *x, causal, mask), [q, k, v, *own], q, k, v)
    exp = cf.outputs_and_grads(
        lambda *x: cf.call(ref, *x, causal, mask), [q32, k32, v32, *own32], q32, k32, v32
    )
    assert out[0].dtype == torch.bfloat16 and out[0].shape == q.shape
    assert all(torch.isfinite(t).all() for t in out)
    cf._compare(f"{name}/{impl} bf16 vs {name}/torch fp32 on CUDA", out, exp, cf.tolerance(cls, "bf16"))
