"""The elu + 1 feature map and linear attention from precomputed features, non-causal and chunked causal.

The causal form processes the sequence in blocks of `chunk` tokens, with an intra-block masked product and a
carried inter-block state (S, z), so no (N, D, d) prefix-sum tensor ever exists. The state and
normalizer are kept in fp32, or fp64 for fp64 inputs (an fp16 normalizer overflows around N = 8K).
"""

from __future__ import annotations

import torch
from torch import Tensor


def _acc(x: Tensor) -> Tensor:
    """x in its accumulation dtype: fp32 for fp32/fp16/bf16, fp64 stays fp64 (for exact tests)."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


def elu_feature_map(x: Tensor) -> Tensor:
    """phi(x) = elu(x) + 1, elementwise. (..., d) -> (..., d).

    Written as x + 1 for x > 0 and exp(x) otherwise: the same function, but it stays > 0 in fp32
    down to x ~ -87, where `elu(x) + 1` rounds to exactly 0 below x ~ -17.
    """
    return torch.where(x > 0, x + 1.0, torch.exp(torch.clamp(x, max=0.0)))


def linear_attention_noncausal(phi_q: Tensor, phi_k: Tensor, v: Tensor, eps: float) -> Tensor:
    """phi_q, phi_k: (B, H, N, D); v: (B, H, N, d) -> (B, H, N, d) in fp32 (fp64 for fp64 inputs)."""
    phi_q, phi_k, v = _acc(phi_q), _acc(phi_k), _acc(v)
    state = phi_k.transpose(-1, -2) @ v  # (B, H, D, d)
    norm = phi_k.sum(dim=-2)  # (B, H, D)
    return (phi_q @ state) / ((phi_q @ norm[..., None]) + eps)


def linear_attention_causal_chunked(
    phi_q: Tensor, phi_k: Tensor, v: Tensor, eps: float, chunk: int = 128
) -> Tensor:
    """Causal linear attention by chunks. Same shapes as `linear_attention_noncausal`."""
    B, H, N, D = phi_q.shape
    d = v.shape[-1]
    acc = torch.promote_types(phi_q.dtype, torch.float32)
    state = phi_q.new_zeros(B, H, D, d, dtype=acc)
    norm = phi_q.new_zeros(B, H, D, dtype=acc)
    outs = []
    for start in range(0, N, chunk):
        stop = min(start + chunk, N)
        fq = phi_q[:, :, start:stop].to(acc)
        fk = phi_k[:, :, start:stop].to(acc)
        vc = v[:, :, start:stop].to(acc)
        local = (fq @ fk.transpose(-1, -2)).tril()  # (B, H, c, c) masked intra-chunk weights
        num = local @ vc + fq @ state
        den = local.sum(-1) + (fq @ norm[..., None]).squeeze(-1)  # (B, H, c)
        outs.append(num / (den[..., None] + eps))
        state = state + fk.transpose(-1, -2) @ vc
        norm = norm + fk.sum(dim=-2)
    return torch.cat(outs, dim=2)
