"""LUNA impl `naive`: phi of the whole sequence at once, then linear attention (the simple fast path).

    window W > 0 (LoLCATs hybrid, both modes): explicit (N, N) weights, exp(s_ij - c_i) for the keys in
    the window (s = q k^T / sqrt(d)), phi(q_i) . phi(k_j) exp(-c_i) for the other visible keys,
    times exp(beta_h) (the learned per-head weight of the linear part), out = P v / (P 1 + eps exp(-c_i));
    c_i = max(0, max of row i's window scores), detached (it cancels)

    non-causal: out = phi(q) S / (phi(q) . z + eps),  S = phi(k)^T v (D, d), z = phi(k)^T 1 (D,)
    causal:     explicit weights A = phi(q) phi(k)^T masked to j <= i (N, N), out = A v / (A 1 + eps)

Materializes every MLP activation (B, H, N, m, G, hidden) and, causal, the (N, N) weights; the
`chunked` impl computes the same function block by block. Padded keys (key_padding_mask False)
have phi(k) = 0; with ch_rms the channel RMS pools over real tokens only.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from attentions.luna.features import LunaWeights, channel_rms, luna_features


def luna_attention_dense(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    weights: LunaWeights,
    causal: bool,
    nonneg: bool = True,
    eps: float = 1e-6,
    ch_rms: bool = False,
    mask: Tensor | None = None,
    window: int = 0,
    log_scale: Tensor | None = None,
) -> Tensor:
    """q, k, v: (B, H, N, d); mask (B, N) bool, True = real -> (B, H, N, d) in the weights' dtype.
    window > 0: the hybrid by explicit (N, N) weights (`_hybrid_dense`)."""
    if ch_rms and causal:
        raise ValueError("ch_rms pools over all tokens; it has no causal form")
    phi_q, phi_k = luna_features(q, weights, nonneg), luna_features(k, weights, nonneg)  # (B, H, N, D)
    if ch_rms:
        phi_q, phi_k = channel_rms(phi_q, eps, mask), channel_rms(phi_k, eps, mask)
    if mask is not None:
        phi_k = phi_k * mask[:, None, :, None].to(phi_k.dtype)
    v = v.to(phi_q.dtype)
    if window > 0:
        q, k = q.to(v.dtype), k.to(v.dtype)
        return _hybrid_dense(q, k, v, phi_q, phi_k, causal, eps, mask, window, log_scale)
    if causal:
        scores = (phi_q @ phi_k.transpose(-1, -2)).tril()  # (B, H, N, N)
        return (scores @ v) / (scores.sum(dim=-1, keepdim=True) + eps)
    state, norm = phi_k.transpose(-1, -2) @ v, phi_k.sum(dim=-2)  # (B, H, D, d), (B, H, D)
    return (phi_q @ state) / (phi_q @ norm[..., None] + eps)


def _hybrid_dense(
    q: Tensor, k: Tensor, v: Tensor, phi_q: Tensor, phi_k: Tensor, causal: bool, eps: float,
    mask: Tensor | None, window: int, log_scale: Tensor | None,
) -> Tensor:  # fmt: skip
    """The window + linear hybrid by explicit weights. q, k, v: (B, H, N, d); phi_q, phi_k (padded keys
    0): (B, H, N, D) -> (B, H, N, d)."""
    n = q.shape[-2]
    i, j = torch.arange(n, device=q.device)[:, None], torch.arange(n, device=q.device)[None, :]
    visible = j <= i if causal else torch.ones(n, n, dtype=torch.bool, device=q.device)
    in_window = visible & ((i - j).abs() < window)
    linear = visible & ~in_window
    if mask is not None:
        in_window = in_window & mask[:, None, None, :]
    scores = ((q @ k.transpose(-1, -2)) / math.sqrt(q.shape[-1])).masked_fill(~in_window, -math.inf)
    c = scores.detach().amax(dim=-1, keepdim=True).clamp_min(0.0)  # (B, H, N, 1)
    features = (phi_q @ phi_k.transpose(-1, -2)).masked_fill(~linear, 0.0)
    if log_scale is not None:  # learned per-head weight exp(beta_h) of the feature scores
        features = features * torch.exp(log_scale)[:, None, None]
    weights = torch.exp(scores - c) + features * torch.exp(-c)
    return (weights @ v) / (weights.sum(dim=-1, keepdim=True) + eps * torch.exp(-c))
