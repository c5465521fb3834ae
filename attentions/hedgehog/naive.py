"""Hedgehog (Zhang et al. 2024), with the optional sliding window (LoLCATs), written for reading: the
reference every impl is checked against. O(N^2): explicit weights; shares no code with the impls.

Feature map, per head h (W_h: (F, d), b_h: (F,)), u = W_h x + b_h:
    exp:      log phi(x) = [u, -u]                          (phi = [exp(u), exp(-u)], the paper's map)
    softmax:  log phi(x) = [log_softmax(u), log_softmax(-u)]  (LoLCATs' map)

Log-scores of query i and key j (the log of the weight before normalization):
    window (i - W < j <= i causal, |i - j| < W non-causal; W = 0: none):   q_i . k_j / sqrt(d)
    every other visible key:                                                log(phi(q_i) . phi(k_j))
With a window the feature scores are multiplied by exp(beta_h), a learned per-head weight of the
linear part against the window part (LoLCATs' window factor; init 0; absent without a window).
Weights = softmax over the visible, real keys of each row; out = weights @ v. That is the hybrid's
one normalizer: sum of exp(scores) in the window plus the feature scores outside it.
log(phi(q_i) . phi(k_j)) is computed as log(exp(a_i - max a_i) . exp(b_j - max b)) + max a_i + max b.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor


def log_features(x: Tensor, W: Tensor, b: Tensor, form: str) -> Tensor:
    """log phi(x). x: (B, H, N, d) -> (B, H, N, 2F), in W's dtype."""
    u = torch.einsum("bhnd,hfd->bhnf", x.to(W.dtype), W) + b[None, :, None, :]
    if form == "exp":
        return torch.cat([u, -u], dim=-1)
    return torch.cat([torch.log_softmax(u, dim=-1), torch.log_softmax(-u, dim=-1)], dim=-1)


def hybrid_log_scores(
    q: Tensor, k: Tensor, W: Tensor, b: Tensor, form: str, causal: bool, window: int,
    key_padding_mask: Tensor | None = None, log_scale: Tensor | None = None,
) -> Tensor:  # fmt: skip
    """(B, H, N, N) log-weights before normalization, -inf where a key is not visible. log_scale (H,):
    beta_h added to the feature scores (the window hybrid's learned weight of its linear part)."""
    a, c = log_features(q, W, b, form), log_features(k, W, b, form)  # (B, H, N, D)
    a_top = a.amax(dim=-1, keepdim=True)
    c_top = c.amax(dim=(-1, -2), keepdim=True)
    feature_scores = torch.log(torch.exp(a - a_top) @ torch.exp(c - c_top).transpose(-1, -2)) + a_top + c_top
    if log_scale is not None:
        feature_scores = feature_scores + log_scale[None, :, None, None]
    exact_scores = (q.to(W.dtype) @ k.to(W.dtype).transpose(-1, -2)) / math.sqrt(q.shape[-1])
    n = q.shape[-2]
    i = torch.arange(n, device=q.device)[:, None]
    j = torch.arange(n, device=q.device)[None, :]
    visible = (j <= i) if causal else torch.ones(n, n, dtype=torch.bool, device=q.device)
    in_window = visible & ((i - j).abs() < window)
    scores = torch.where(in_window, exact_scores, feature_scores)
    visible = visible[None, None]
    if key_padding_mask is not None:
        visible = visible & key_padding_mask[:, None, None, :]
    return scores.masked_fill(~visible, -math.inf)


def hedgehog_attention(
    q: Tensor, k: Tensor, v: Tensor, W: Tensor, b: Tensor, form: str, causal: bool, window: int = 0,
    key_padding_mask: Tensor | None = None, log_scale: Tensor | None = None,
) -> Tensor:  # fmt: skip
    """q, k, v: (B, H, N, d) -> (B, H, N, d) in W's dtype."""
    log_scores = hybrid_log_scores(q, k, W, b, form, causal, window, key_padding_mask, log_scale)
    weights = torch.softmax(log_scores, dim=-1)
    return weights @ v.to(W.dtype)


def reference(
    variant: Any, q: Tensor, k: Tensor, v: Tensor, causal: bool, key_padding_mask: Tensor | None = None
) -> Tensor:
    """The contract's reference of `hedgehog` (every impl), with the instance's W, b and params."""
    p = variant.params
    return hedgehog_attention(
        q, k, v, variant.W, variant.b, p.feature_map, causal, p.window, key_padding_mask,
        getattr(variant, "log_linear_scale", None),
    )  # fmt: skip
