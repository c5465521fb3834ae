"""Second-order Taylor linear attention (Based; QT-ViT), written for reading: the fp32 reference of `taylor`.

With q' = q and k' = k, or q' = q P and k' = k P for the variant's fixed projection P (d x d'):

    s_ij  = q'_i . k'_j / sqrt(d)                       (d = the head dim)
    A_ij  = 1 + s_ij + s_ij^2 / 2                        >= 1/2, for every visible key j: all j
                                                         (non-causal) or j <= i (causal), never a
                                                         padded key
    out_i = sum_j A_ij v_j / (sum_j A_ij + eps)

A_ij is the second-order Taylor polynomial of exp(s_ij), and equals phi(q_i) . phi(k_j) for
phi(x) = [1, x, vec(x x^T)/sqrt(2)] on x = q' d^-1/4: the variant uses that form in linear time
(attentions/taylor/chunked.py). This file is O(N^2), explicit (N, N) weights, for tests only.
fp32 (fp64 for fp64 inputs).
"""

from __future__ import annotations

import torch
from torch import Tensor


def taylor_weights(
    q: Tensor, k: Tensor, projection: Tensor | None, causal: bool, key_padding_mask: Tensor | None = None
) -> Tensor:
    """A (B, H, N, N): 1 + s + s^2/2 on the visible keys, 0 elsewhere. q, k: (B, H, N, d);
    projection (d, d') or None; key_padding_mask (B, N) bool, True = real."""
    acc = torch.promote_types(q.dtype, torch.float32)
    q, k = q.to(acc), k.to(acc)
    d = q.shape[-1]
    if projection is not None:
        q, k = q @ projection.to(acc), k @ projection.to(acc)
    s = q @ k.transpose(-1, -2) / d**0.5
    weights = 1.0 + s + s**2 / 2.0
    if causal:
        weights = weights.tril()
    if key_padding_mask is not None:
        weights = weights * key_padding_mask[:, None, None, :].to(acc)
    return weights


def taylor_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    causal: bool,
    projection: Tensor | None = None,
    eps: float = 1e-6,
    key_padding_mask: Tensor | None = None,
) -> Tensor:
    """(B, H, N, d) -> (B, H, N, d) in fp32 (fp64 for fp64 inputs)."""
    weights = taylor_weights(q, k, projection, causal, key_padding_mask)
    return (weights @ v.to(weights.dtype)) / (weights.sum(dim=-1, keepdim=True) + eps)


def reference(
    variant: object, q: Tensor, k: Tensor, v: Tensor, causal: bool, key_padding_mask: Tensor | None = None
) -> Tensor:
    """The contract's reference of `taylor`, with the instance's projection (None without) and eps."""
    return taylor_attention(q, k, v, causal, variant.projection, variant.params.eps, key_padding_mask)
