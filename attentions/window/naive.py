"""Sliding-window softmax attention, written for reading: the fp32 reference of `window`.

    scores[i, j] = q_i . k_j / sqrt(d)
    visible(i, j) = i - W < j <= i             causal (W keys: i-W+1 .. i)
                    |i - j| < W                non-causal (i-W+1 .. i+W-1: flash_attn's
                                               window_size=(W-1, W-1))
                    and key j is real (key_padding_mask[b, j] True)
    out_i = sum_j softmax_j(scores[i, j] over the visible j) v_j

Hidden keys get the lowest finite float (weight exactly 0 next to a visible key; a row with no
visible key stays finite). O(N^2): the whole (N, N) matrix with a band mask, for tests only.
Computed in fp32 (fp64 for fp64 inputs).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def band_mask(n: int, window: int, causal: bool, device: torch.device | str = "cpu") -> Tensor:
    """(N, N) bool: key j is inside query i's window."""
    i = torch.arange(n, device=device)[:, None]
    j = torch.arange(n, device=device)[None, :]
    if causal:
        return (j <= i) & (j > i - window)
    return (j - i).abs() < window


def window_attention(
    q: Tensor, k: Tensor, v: Tensor, window: int, causal: bool, key_padding_mask: Tensor | None = None
) -> Tensor:
    """q, k, v: (B, H, N, d); key_padding_mask (B, N) bool, True = real -> (B, H, N, d) in fp32
    (fp64 for fp64 inputs)."""
    dtype = torch.float64 if q.dtype == torch.float64 else torch.float32
    q, k, v = q.to(dtype), k.to(dtype), v.to(dtype)
    n, d = q.shape[-2], q.shape[-1]
    scores = q @ k.transpose(-1, -2) / math.sqrt(d)  # (B, H, N, N)
    visible = band_mask(n, window, causal, q.device)[None, None]  # (1, 1, N, N)
    if key_padding_mask is not None:
        visible = visible & key_padding_mask[:, None, None, :]  # (B, 1, N, N)
    weights = torch.softmax(scores.masked_fill(~visible, torch.finfo(dtype).min), dim=-1)
    return weights @ v


def reference(
    variant: object, q: Tensor, k: Tensor, v: Tensor, causal: bool, key_padding_mask: Tensor | None = None
) -> Tensor:
    """The contract's reference of `window`, at the instance's window W. (B, H, N, d) -> fp32."""
    return window_attention(q, k, v, variant.params.window, causal, key_padding_mask)
