"""LUNA (Abbasi, Abbasi et al. 2025, arXiv 2512.08061), written for reading: the reference.

Feature map, for a token x in R^d (q or k of one head), pre-scaled x' = x * d^(-1/4) so that
phi(q).phi(k) can learn exp(q.k / sqrt(d)) as Performer's does:

    u_i       = w_i . x' + b_i                          i = 1..m   (W: (m, d), b: (m,))
    psi(u)_l  = ReLU(w2_l . ReLU(w1 * u + b1) + b2_l)    l = 1..L   (final ReLU iff nonneg)
    phi(x)    = h(x) / sqrt(m) * [psi(u_i)_l]  flattened index i*L + l,  D = m*L
    h(x)      = softplus(a . x' + c)  (envelope "learned"; a = 0, c = log(e-1) at init -> 1)

Channel functions psi, two layouts:
    shared_channels=True : one MLP 1 -> hidden -> L. w1, b1: (1, hidden); w2: (L, hidden); b2: (L,)
    shared_channels=False: L scalar MLPs 1 -> hidden -> 1 (the paper's code).
                           w1, b1: (L, hidden); w2: (L, hidden); b2: (L,)
    Both are written as w1, b1: (G, hidden) with G = 1 or L; channel l uses row min(l, G-1).

Attention (Katharopoulos-style linear attention with phi; eps keeps 0/0 away since ReLU
features are often exactly 0), written with explicit weights A_ij = phi(q_i) . phi(k_j):
    out_i = sum_j A_ij v_j / (sum_j A_ij + eps)   over visible keys j: all (non-causal) or j <= i
                                                  (causal), never a padded key (mask False)
window W > 0 (the LoLCATs window + linear hybrid): inside the sliding window (i - W < j <= i causal,
|i - j| < W non-causal) A_ij is replaced by the exact softmax score exp(q_i . k_j / sqrt(d)); one
normalizer over both parts; the feature scores carry a learned per-head weight exp(beta_h)
(init 1). Computed with each row scaled by exp(-c_i), c_i = max(0, max_j in window
of q_i . k_j / sqrt(d)), which cancels between numerator and denominator (eps scaled alike).
ch_rms (optional, from the paper's code): each of the D feature channels of phi(q) and of
phi(k) is divided by its RMS over the sequence's real tokens (per batch and head, never pooled
over the batch). It pools over all tokens, so it is defined for non-causal attention only.

Everything is O(N^2) and evaluates each channel function separately: for reading and tests only.
The impls share none of this code (attentions/luna/features.py, dense.py, chunked.py, triton_*).
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor


def scalar_mlp(u: Tensor, w1: Tensor, b1: Tensor, w2: Tensor, b2: Tensor, nonneg: bool) -> Tensor:
    """Channel functions on scalars, one channel l at a time. u: (..., m) -> (..., m, L)."""
    channels = []
    for l in range(w2.shape[0]):  # noqa: E741  (the paper's index)
        g = min(l, w1.shape[0] - 1)
        hidden = F.relu(u[..., None] * w1[g] + b1[g])  # (..., m, hidden)
        out = (hidden * w2[l]).sum(dim=-1) + b2[l]  # (..., m)
        channels.append(F.relu(out) if nonneg else out)
    return torch.stack(channels, dim=-1)


def luna_features(
    x: Tensor,
    W: Tensor,
    b: Tensor,
    w1: Tensor,
    b1: Tensor,
    w2: Tensor,
    b2: Tensor,
    nonneg: bool = True,
    env_a: Tensor | None = None,
    env_c: Tensor | None = None,
) -> Tensor:
    """phi(x). x: (B, H, N, d) -> (B, H, N, m*L), computed in the parameters' dtype."""
    d, m = x.shape[-1], W.shape[0]
    xs = x.to(W.dtype) * d**-0.25
    u = torch.einsum("bhnd,md->bhnm", xs, W) + b  # (B, H, N, m)
    feats = scalar_mlp(u, w1, b1, w2, b2, nonneg).flatten(-2) / math.sqrt(m)  # (B, H, N, D)
    if env_a is not None:
        feats = feats * F.softplus(torch.einsum("bhnd,d->bhn", xs, env_a) + env_c)[..., None]
    return feats


def channel_rms(phi: Tensor, eps: float, key_padding_mask: Tensor | None = None) -> Tensor:
    """Divide each feature channel by its RMS over the real tokens. phi: (B, H, N, D); mask (B, N)."""
    real = torch.ones(phi.shape[0], phi.shape[-2], dtype=torch.bool, device=phi.device)
    if key_padding_mask is not None:
        real = key_padding_mask
    real = real[:, None, :, None]  # (B, 1, N, 1)
    count = real.sum(dim=-2, keepdim=True)
    mean_sq = torch.where(real, phi * phi, torch.zeros_like(phi)).sum(dim=-2, keepdim=True) / count
    return phi / torch.sqrt(mean_sq + eps)


def linear_attention(
    phi_q: Tensor, phi_k: Tensor, v: Tensor, causal: bool, eps: float, key_padding_mask: Tensor | None = None
) -> Tensor:
    """Linear attention from features by explicit weights. phi_q, phi_k: (B, H, N, D); v: (B, H, N, d)
    -> (B, H, N, d), in the features' dtype."""
    weights = phi_q @ phi_k.transpose(-1, -2)  # (B, H, N, N): A_ij
    n = weights.shape[-1]
    visible = torch.ones(n, n, dtype=torch.bool, device=weights.device)
    if causal:
        visible = visible.tril()
    visible = visible[None, None]
    if key_padding_mask is not None:
        visible = visible & key_padding_mask[:, None, None, :]
    weights = torch.where(visible, weights, torch.zeros_like(weights))
    return (weights @ v.to(phi_q.dtype)) / (weights.sum(-1, keepdim=True) + eps)


def hybrid_attention(
    q: Tensor, k: Tensor, v: Tensor, phi_q: Tensor, phi_k: Tensor, causal: bool, eps: float, window: int,
    key_padding_mask: Tensor | None = None, log_scale: Tensor | None = None,
) -> Tensor:  # fmt: skip
    """The window + linear hybrid from features by explicit weights. q, k, v: (B, H, N, d); phi_q, phi_k:
    (B, H, N, D) -> (B, H, N, d), in the features' dtype."""
    n = q.shape[-2]
    rows = torch.arange(n, device=q.device)[:, None]
    cols = torch.arange(n, device=q.device)[None, :]
    visible = (cols <= rows) if causal else torch.ones(n, n, dtype=torch.bool, device=q.device)
    visible = visible[None, None]
    if key_padding_mask is not None:
        visible = visible & key_padding_mask[:, None, None, :]
    near = visible & ((cols - rows).abs() < window)  # scored exactly
    far = visible & ~near  # scored by the features
    exact = (q.to(phi_q.dtype) @ k.to(phi_q.dtype).transpose(-1, -2)) / math.sqrt(q.shape[-1])
    minus_inf = torch.full_like(exact, -math.inf)
    c = torch.where(near, exact, minus_inf).amax(dim=-1, keepdim=True).clamp_min(0.0)  # row scale
    feature = phi_q @ phi_k.transpose(-1, -2)
    if log_scale is not None:  # the learned weight exp(beta_h) of head h's feature scores
        feature = feature * torch.exp(log_scale).reshape(1, -1, 1, 1)
    weights = torch.exp(torch.where(near, exact - c, minus_inf))
    weights = weights + torch.where(far, feature, torch.zeros_like(feature)) * torch.exp(-c)
    return (weights @ v.to(phi_q.dtype)) / (weights.sum(dim=-1, keepdim=True) + eps * torch.exp(-c))


def luna_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    W: Tensor,
    b: Tensor,
    w1: Tensor,
    b1: Tensor,
    w2: Tensor,
    b2: Tensor,
    causal: bool,
    nonneg: bool = True,
    eps: float = 1e-6,
    ch_rms: bool = False,
    env_a: Tensor | None = None,
    env_c: Tensor | None = None,
    key_padding_mask: Tensor | None = None,
    window: int = 0,
    log_scale: Tensor | None = None,
) -> Tensor:
    """LUNA. q, k, v: (B, H, N, d); key_padding_mask (B, N) bool, True = real -> (B, H, N, d) in the
    parameters' dtype. window > 0: the window + linear hybrid."""
    if ch_rms and causal:
        raise ValueError("ch_rms pools over all tokens; it has no causal form")
    phi_q = luna_features(q, W, b, w1, b1, w2, b2, nonneg, env_a, env_c)
    phi_k = luna_features(k, W, b, w1, b1, w2, b2, nonneg, env_a, env_c)
    if ch_rms:
        phi_q, phi_k = channel_rms(phi_q, eps, key_padding_mask), channel_rms(phi_k, eps, key_padding_mask)
    if window > 0:
        return hybrid_attention(q, k, v, phi_q, phi_k, causal, eps, window, key_padding_mask, log_scale)
    return linear_attention(phi_q, phi_k, v, causal, eps, key_padding_mask)


def reference(
    variant: Any, q: Tensor, k: Tensor, v: Tensor, causal: bool, key_padding_mask: Tensor | None = None
) -> Tensor:
    """The contract's reference of `luna` (every impl), with the instance's weights and params."""
    p, w = variant.params, variant.weights()
    return luna_attention(
        q, k, v, *w[:6], causal=causal, nonneg=p.nonneg, eps=p.eps, ch_rms=p.ch_rms,
        env_a=w.env_a, env_c=w.env_c, key_padding_mask=key_padding_mask, window=p.window,
        log_scale=getattr(variant, "log_linear_scale", None),
    )  # fmt: skip
