"""Exact softmax attention, written for reading: the fp32 reference of `softmax` (and of `flash`).

    scores = q k^T / sqrt(d)                      (N, N) per batch and head
    scores[i, j] = lowest float for j > i         (causal only)
    scores[i, j] = lowest float for padded keys j (key_padding_mask[b, j] False)
    out = softmax(scores, dim=-1) v

A hidden key gets the lowest finite float rather than -inf: next to any visible key its weight is
exactly 0, and a row with no visible key (a padded query) stays finite (unspecified, not NaN, so
it cannot poison gradients). Everything is computed in fp32 (fp64 if the inputs are fp64).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def softmax_attention(
    q: Tensor, k: Tensor, v: Tensor, causal: bool, key_padding_mask: Tensor | None = None
) -> Tensor:
    """q, k, v: (B, H, N, d); key_padding_mask: (B, N) bool, True = real -> (B, H, N, d) in fp32
    (fp64 if the inputs are fp64)."""
    dtype = torch.float64 if q.dtype == torch.float64 else torch.float32
    q, k, v = q.to(dtype), k.to(dtype), v.to(dtype)
    n, d = q.shape[-2], q.shape[-1]
    scores = q @ k.transpose(-1, -2) / math.sqrt(d)  # (B, H, N, N)
    visible = torch.ones(n, n, dtype=torch.bool, device=q.device)
    if causal:
        visible = visible.tril()  # key j visible to query i iff j <= i
    visible = visible[None, None]  # (1, 1, N, N)
    if key_padding_mask is not None:
        visible = visible & key_padding_mask[:, None, None, :]  # (B, 1, N, N)
    scores = scores.masked_fill(~visible, torch.finfo(dtype).min)
    weights = torch.softmax(scores, dim=-1)
    return weights @ v


def reference(
    variant: object, q: Tensor, k: Tensor, v: Tensor, causal: bool, key_padding_mask: Tensor | None = None
) -> Tensor:
    """The contract's reference of `softmax` (no parameters to read). (B, H, N, d) -> fp32."""
    return softmax_attention(q, k, v, causal, key_padding_mask)
