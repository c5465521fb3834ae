"""LUNA's learnable feature map phi, its weights and their initial values (the fast paths' shared pieces).

For a token x in R^d (q or k of one head), x' = x d^(-1/4), weights as in `LunaWeights`:

    u_i      = w_i . x' + b_i                            i = 1..m
    psi(u)_l = ReLU(w2_l . ReLU(w1_g u + b1_g) + b2_l)    l = 1..L, g = min(l, G - 1); outer ReLU iff nonneg
    phi(x)   = h(x) / sqrt(m) [psi(u_i)_l]               flattened index i L + l, D = m L
    h(x)     = softplus(a . x' + c)                       learned envelope (a = 0, c = log(e - 1): 1 at init)

G = 1 (one MLP 1 -> hidden -> L, its second layer a matmul) or G = L (L scalar MLPs 1 -> hidden -> 1,
computed as broadcasts). naive.py writes the same map independently, channel by channel.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

ENVELOPE_C0 = math.log(math.e - 1.0)  # softplus(ENVELOPE_C0) == 1


class LunaWeights(NamedTuple):
    """The learnable tensors of LUNA (fp32); G = 1 (shared channels) or L."""

    W: Tensor  # (m, d)
    b: Tensor  # (m,)
    w1: Tensor  # (G, hidden)
    b1: Tensor  # (G, hidden)
    w2: Tensor  # (L, hidden)
    b2: Tensor  # (L,)
    env_a: Tensor | None = None  # (d,)  learned envelope, or None
    env_c: Tensor | None = None  # ()


def init_luna_params(
    d: int,
    m: int,
    L: int,
    hidden: int,
    shared_channels: bool,
    generator: torch.Generator | None = None,
    alive: bool = False,
) -> dict[str, Tensor]:
    """Initial parameters: W ~ N(0, 1/d), b = 0; MLP layers as torch.nn.Linear's default init.

    `alive`: the same draws, then each channel's output bias b2_l is raised just enough that the
    channel's pre-ReLU output at u = 0 is at least 1/sqrt(hidden) (b2's init bound). Without it a
    channel whose output at u = 0 is negative (about half of them) is zero for every token whose u
    is near 0, and a freshly initialized model's q, k are that small: such a channel is all zero,
    passes no gradient, and stays dead (channels_at_zero shows the values)."""
    G = 1 if shared_channels else L
    bound2 = 1.0 / math.sqrt(hidden)

    def uniform(shape: tuple[int, ...], bound: float) -> Tensor:
        return (torch.rand(shape, generator=generator) * 2 - 1) * bound

    params = {
        "W": torch.randn(m, d, generator=generator) / math.sqrt(d),
        "b": torch.zeros(m),
        "w1": uniform((G, hidden), 1.0),
        "b1": uniform((G, hidden), 1.0),
        "w2": uniform((L, hidden), bound2),
        "b2": uniform((L,), bound2),
        "env_a": torch.zeros(d),
        "env_c": torch.full((), ENVELOPE_C0),
    }
    if alive:
        at_zero = channels_at_zero(params["b1"], params["w2"], params["b2"])
        params["b2"] = params["b2"] + (bound2 - at_zero).clamp_min(0.0)
    return params


def channels_at_zero(b1: Tensor, w2: Tensor, b2: Tensor) -> Tensor:
    """Each channel's pre-ReLU output psi_l(0) = w2_l . ReLU(b1_g) + b2_l at u = 0 (the projection's
    value for an input x = 0). b1 (G, hidden), w2 (L, hidden), b2 (L,) -> (L,)."""
    rows = torch.arange(w2.shape[0], device=b1.device).clamp(max=b1.shape[0] - 1)  # g = min(l, G - 1)
    return (F.relu(b1[rows]) * w2).sum(-1) + b2


def luna_features(x: Tensor, w: LunaWeights, nonneg: bool = True) -> Tensor:
    """phi(x). x: (B, H, N, d) -> (B, H, N, m L), computed in W's dtype (fp32 in the variant)."""
    m, (L, G) = w.W.shape[0], (w.w2.shape[0], w.w1.shape[0])
    xs = x.to(w.W.dtype) * x.shape[-1] ** -0.25
    u = xs @ w.W.T + w.b  # (B, H, N, m)
    hidden = F.relu(u[..., None, None] * w.w1 + w.b1)  # (B, H, N, m, G, hidden)
    if G == 1:
        out = hidden[..., 0, :] @ w.w2.T + w.b2  # (B, H, N, m, L)
    elif G == L:
        out = (hidden * w.w2).sum(-1) + w.b2  # (B, H, N, m, L): channel l uses hidden row l
    else:
        raise ValueError(f"w1 needs 1 or L = {L} rows, got {G}")
    feats = (F.relu(out) if nonneg else out).flatten(-2) / math.sqrt(m)  # (B, H, N, D)
    if w.env_a is not None:
        feats = feats * F.softplus(xs @ w.env_a + w.env_c)[..., None]
    return feats


def channel_rms(phi: Tensor, eps: float, mask: Tensor | None = None) -> Tensor:
    """phi divided by each channel's RMS over the real tokens. phi: (B, H, N, D); mask (B, N) bool."""
    if mask is None:
        mean_sq = phi.pow(2).mean(dim=-2, keepdim=True)
    else:
        keep = mask[:, None, :, None].to(phi.dtype)
        mean_sq = (phi.pow(2) * keep).sum(dim=-2, keepdim=True) / keep.sum(dim=-2, keepdim=True).clamp_min(1)
    return phi / torch.sqrt(mean_sq + eps)
