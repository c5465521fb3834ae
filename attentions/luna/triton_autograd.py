"""LUNA through the fused Triton kernels, differentiable in q, k, v and every learnable parameter.

What is fused (see triton_kernels.py): the feature map phi (projection, scalar MLP, ReLUs, 1/sqrt(m))
is computed in registers in every kernel, forward and backward, and never written to memory; so are
the MLP activations, dphi and the MLP's backward. Saved for the backward: q, k, v and, non-causal,
S (B*H, D, d) and z (B*H, D) fp32; phi, the output numerator and denominator are recomputed in fp32
(not read back from the rounded output). The causal backward passes den, dden (B*H, N) fp32 from its
query kernel to its key kernel.
What torch does: sum the per-program partials of S, z (non-causal forward), of dS, dz (non-causal
backward), and of the parameter gradients (one fp32 slice of D*d + 2D + 3*hidden*D floats per
program, reduced to W, b, w1, b1, w2, b2 shapes in `reduce_param_grads`). Nothing of size
B*H*N*m*hidden, nor B*H*N*D, ever exists.
"""

from __future__ import annotations

import torch
from torch import Tensor

from attentions.luna import triton_launch as tk
from attentions.luna.features import LunaWeights


class LunaTritonFunction(torch.autograd.Function):
    """out = LUNA(q, k, v; W, b, w1, b1, w2, b2). q, k, v: (B, H, N, d) -> (B, H, N, d) in q's dtype."""

    @staticmethod
    def forward(ctx, q, k, v, W, b, w1, b1, w2, b2, causal: bool, nonneg: bool, eps: float, block_n, splits):
        q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
        weights = (W, b, w1, b1, w2, b2)
        out, S, z = tk.luna_forward(q, k, v, weights, causal, nonneg, eps, block_n, splits)
        ctx.save_for_backward(q, k, v, S, z, *weights)
        ctx.config = (causal, nonneg, eps, block_n, splits)
        return out

    @staticmethod
    def backward(ctx, dout: Tensor):
        q, k, v, S, z, *weights = ctx.saved_tensors
        causal, nonneg, eps, block_n, splits = ctx.config
        grads = tk.luna_backward(
            dout.contiguous(), q, k, v, S, z, tuple(weights), causal, nonneg, eps, block_n, splits
        )
        grads[3:] = [g.to(w.dtype) for g, w in zip(grads[3:], weights, strict=True)]
        return (*grads, None, None, None, None, None)


def luna_attention_triton(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    weights: LunaWeights,
    causal: bool,
    nonneg: bool = True,
    eps: float = 1e-6,
    block_n: int | None = None,
    splits: int | None = None,
) -> Tensor:
    """LUNA attention with the fused kernels. q, k, v: (B, H, N, d) -> (B, H, N, d) in q's dtype.

    `block_n` tokens per tile (a power of two >= 16; the causal intra-block size too), or None:
    autotuned per (head_dim, D, dtype) over triton_configs.candidates; `splits` programs per head
    for the non-causal passes (None: fill the GPU). The learned envelope is not
    supported (weights.env_a must be None); channel RMS is not either (no argument for it).
    """
    if weights.env_a is not None:
        raise ValueError("luna triton kernels do not implement the learned envelope")
    return LunaTritonFunction.apply(q, k, v, *weights[:6], causal, nonneg, eps, block_n, splits)
