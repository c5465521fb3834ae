"""Exact softmax attention, written for reading: the fp32 reference of `softmax`.

    scores = q k^T / sqrt(d)                      (N, N) per batch and head
    scores[i, j] = -inf for j > i                 (causal only)
    out = softmax(scores, dim=-1) v

Everything is computed in fp32 (or in the inputs' dtype when that is fp64).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def softmax_attention(q: Tensor, k: Tensor, v: Tensor, causal: bool) -> Tensor:
    """q, k, v: (B, H, N, d) -> (B, H, N, d) in fp32 (fp64 if the inputs are fp64)."""
    dtype = torch.float64 if q.dtype == torch.float64 else torch.float32
    q, k, v = q.to(dtype), k.to(dtype), v.to(dtype)
    n, d = q.shape[-2], q.shape[-1]
    scores = q @ k.transpose(-1, -2) / math.sqrt(d)  # (B, H, N, N)
    if causal:
        future = torch.ones(n, n, dtype=torch.bool, device=q.device).triu(diagonal=1)  # j > i
        scores = scores.masked_fill(future, float("-inf"))
    weights = torch.softmax(scores, dim=-1)
    return weights @ v
