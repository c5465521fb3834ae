"""Linear attention (Katharopoulos et al. 2020), written for reading: the fp32 reference of `linear`.

Feature map phi(x) = elu(x) + 1 > 0, applied to each d-dimensional query and key (D = d); written
here as exp(min(x, 0)) + max(x, 0), which is the same function and stays > 0 in fp32 down to
x ~ -87 (`elu(x) + 1` rounds to exactly 0 below x ~ -17).

    A_ij  = phi(q_i) . phi(k_j)             for every visible key j: all j (non-causal) or j <= i
                                            (causal), and never a padded key (mask False)
    out_i = sum_j A_ij v_j / (sum_j A_ij + eps)

This is O(N^2) (explicit (N, N) weights) and for reading and testing only; the variant computes
the same function in linear time (attentions/linear/chunked.py). Everything here is computed in
fp32 (fp64 for fp64 inputs).
"""

from __future__ import annotations

import torch
from torch import Tensor


def elu_feature_map(x: Tensor) -> Tensor:
    """phi(x) = elu(x) + 1 = exp(min(x, 0)) + max(x, 0), elementwise. (..., d) -> (..., d)."""
    return torch.exp(torch.clamp(x, max=0.0)) + torch.clamp(x, min=0.0)


def linear_attention(
    q: Tensor, k: Tensor, v: Tensor, causal: bool, eps: float = 1e-6, key_padding_mask: Tensor | None = None
) -> Tensor:
    """q, k, v: (B, H, N, d); key_padding_mask (B, N) bool, True = real -> (B, H, N, d) in fp32
    (fp64 for fp64 inputs)."""
    acc = torch.promote_types(q.dtype, torch.float32)
    phi_q = elu_feature_map(q.to(acc))  # (B, H, N, D)
    phi_k = elu_feature_map(k.to(acc))  # (B, H, N, D)
    weights = phi_q @ phi_k.transpose(-1, -2)  # (B, H, N, N): A_ij
    if causal:
        weights = weights.tril()  # keep j <= i
    if key_padding_mask is not None:
        weights = weights * key_padding_mask[:, None, None, :].to(acc)  # padded keys get weight 0
    return (weights @ v.to(acc)) / (weights.sum(dim=-1, keepdim=True) + eps)


def reference(
    variant: object, q: Tensor, k: Tensor, v: Tensor, causal: bool, key_padding_mask: Tensor | None = None
) -> Tensor:
    """The contract's reference of `linear`, at the instance's eps. (B, H, N, d) -> fp32."""
    return linear_attention(q, k, v, causal, variant.params.eps, key_padding_mask)
