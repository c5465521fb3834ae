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
features are often exactly 0):
    non-causal: out_i = phi(q_i) S / (phi(q_i) . z + eps),  S = sum_j phi(k_j) v_j^T, z = sum_j phi(k_j)
    causal:     the same with S, z summed over j <= i.
ch_rms (optional, from the paper's code): each of the D feature channels of phi(q) and of
phi(k) is divided by its RMS over the sequence (per batch and head, never pooled over the
batch). It pools over all tokens, so it is defined for non-causal attention only.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

ENVELOPE_C0 = math.log(math.e - 1.0)  # softplus(ENVELOPE_C0) == 1


def scalar_mlp(u: Tensor, w1: Tensor, b1: Tensor, w2: Tensor, b2: Tensor, nonneg: bool) -> Tensor:
    """Channel functions on scalars. u: (..., m) -> (..., m, L)."""
    L, G = w2.shape[0], w1.shape[0]
    hidden = F.relu(u[..., None, None] * w1 + b1)  # (..., m, G, hidden)
    if G == 1:
        out = hidden[..., 0, :] @ w2.T + b2  # (..., m, L)
    else:
        assert G == L, "per-channel layout needs one hidden layer per output channel"
        out = (hidden * w2).sum(-1) + b2  # (..., m, L)
    return F.relu(out) if nonneg else out


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
    """phi(x). x: (B, H, N, d) -> (B, H, N, m*L), computed in the parameters' dtype (fp32 in the variant)."""
    d = x.shape[-1]
    m = W.shape[0]
    xs = x.to(W.dtype) * d**-0.25
    u = xs @ W.T + b  # (B, H, N, m)
    feats = scalar_mlp(u, w1, b1, w2, b2, nonneg).flatten(-2) / math.sqrt(m)  # (B, H, N, D)
    if env_a is not None:
        feats = feats * F.softplus(xs @ env_a + env_c)[..., None]
    return feats


def channel_rms(phi: Tensor, eps: float) -> Tensor:
    """Divide each feature channel by its RMS over the sequence. phi: (B, H, N, D)."""
    return phi / torch.sqrt(phi.pow(2).mean(dim=-2, keepdim=True) + eps)


def linear_attention(phi_q: Tensor, phi_k: Tensor, v: Tensor, causal: bool, eps: float) -> Tensor:
    """Linear attention from features. phi_q, phi_k: (B, H, N, D); v: (B, H, N, d) -> (B, H, N, d).

    Computed in the features' dtype. The causal form is written with explicit masked weights
    (O(N^2), for reading and testing only).
    """
    v = v.to(phi_q.dtype)
    if not causal:
        state = phi_k.transpose(-1, -2) @ v  # (B, H, D, d)
        norm = phi_k.sum(dim=-2)  # (B, H, D)
        return (phi_q @ state) / ((phi_q @ norm[..., None]) + eps)
    weights = phi_q @ phi_k.transpose(-1, -2)  # (B, H, N, N)
    n = weights.shape[-1]
    mask = torch.ones(n, n, dtype=torch.bool, device=weights.device).tril()
    weights = weights * mask
    return (weights @ v) / (weights.sum(-1, keepdim=True) + eps)


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
) -> Tensor:
    """LUNA. q, k, v: (B, H, N, d) -> (B, H, N, d) in the parameters' dtype (fp32 in the variant)."""
    if ch_rms and causal:
        raise ValueError("ch_rms pools over all tokens; it has no causal form")
    phi_q = luna_features(q, W, b, w1, b1, w2, b2, nonneg, env_a, env_c)
    phi_k = luna_features(k, W, b, w1, b1, w2, b2, nonneg, env_a, env_c)
    if ch_rms:
        phi_q, phi_k = channel_rms(phi_q, eps), channel_rms(phi_k, eps)
    return linear_attention(phi_q, phi_k, v, causal, eps)


def init_luna_params(
    d: int, m: int, L: int, hidden: int, shared_channels: bool, generator: torch.Generator | None = None
) -> dict[str, Tensor]:
    """Initial parameters: W ~ N(0, 1/d), b = 0; MLP layers as torch.nn.Linear's default init."""
    G = 1 if shared_channels else L
    bound2 = 1.0 / math.sqrt(hidden)

    def uniform(shape: tuple[int, ...], bound: float) -> Tensor:
        return (torch.rand(shape, generator=generator) * 2 - 1) * bound

    return {
        "W": torch.randn(m, d, generator=generator) / math.sqrt(d),
        "b": torch.zeros(m),
        "w1": uniform((G, hidden), 1.0),
        "b1": uniform((G, hidden), 1.0),
        "w2": uniform((L, hidden), bound2),
        "b2": uniform((L,), bound2),
        "env_a": torch.zeros(d),
        "env_c": torch.full((), ENVELOPE_C0),
    }
