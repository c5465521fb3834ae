"""Linear attention (Katharopoulos et al. 2020), written for reading: the fp32 reference of `linear`.

Feature map phi(x) = elu(x) + 1 > 0, applied to each d-dimensional query and key (D = d).

    non-causal: out_i = phi(q_i) S / (phi(q_i) . z + eps),   S = sum_j phi(k_j) v_j^T  (D, d)
                                                              z = sum_j phi(k_j)         (D,)
    causal:     the same with S and z summed over j <= i only, written here as explicit masked
                weights A_ij = phi(q_i) . phi(k_j) for j <= i, out_i = sum_j A_ij v_j / (sum_j A_ij + eps).

The causal form costs O(N^2) and is for reading and testing only; the variant computes it by
chunks (attentions/linear/chunked.py). Everything here is computed in fp32 (fp64 for fp64 inputs).
"""

from __future__ import annotations

import torch
from torch import Tensor


def elu_feature_map(x: Tensor) -> Tensor:
    """phi(x) = elu(x) + 1, elementwise. (..., d) -> (..., d).

    Written as x + 1 for x > 0 and exp(x) otherwise: the same function, but it stays > 0 in fp32
    down to x ~ -87, where `elu(x) + 1` rounds to exactly 0 below x ~ -17.
    """
    return torch.where(x > 0, x + 1.0, torch.exp(torch.clamp(x, max=0.0)))


def linear_attention(q: Tensor, k: Tensor, v: Tensor, causal: bool, eps: float = 1e-6) -> Tensor:
    """q, k, v: (B, H, N, d) -> (B, H, N, d) in fp32 (fp64 for fp64 inputs)."""
    acc = torch.promote_types(q.dtype, torch.float32)
    phi_q = elu_feature_map(q.to(acc))  # (B, H, N, D)
    phi_k = elu_feature_map(k.to(acc))  # (B, H, N, D)
    v = v.to(acc)
    if not causal:
        state = phi_k.transpose(-1, -2) @ v  # (B, H, D, d)
        norm = phi_k.sum(dim=-2)  # (B, H, D)
        return (phi_q @ state) / (phi_q @ norm[..., None] + eps)
    weights = phi_q @ phi_k.transpose(-1, -2)  # (B, H, N, N)
    weights = weights.tril()  # keep j <= i
    return (weights @ v) / (weights.sum(dim=-1, keepdim=True) + eps)
