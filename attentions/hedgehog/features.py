"""Hedgehog's learnable feature map (the fast paths' piece; naive.py writes its own).

Per head h, for a token x in R^d (a row of q or k), u = W_h x + b_h in R^F (W_h: (F, d), identity-
initialised; b_h: (F,), zero), D = 2F features:

    "exp"     (the paper's form)  phi(x) = [exp(u), exp(-u)]
    "softmax" (LoLCATs' form)     phi(x) = [softmax_F(u), softmax_F(-u)]

Returned scaled, with a log-scale l so that the true phi is phi * exp(l): for "exp", l = max_f |u_f|
(every scaled feature <= 1, one of them 1); for "softmax", l = 0 (features already <= 1). l is
detached: the attention is invariant to it (window_linear/chunked.py says where it cancels).
"""

from __future__ import annotations

import torch
from torch import Tensor

FEATURE_MAPS = ("exp", "softmax")


def init_hedgehog_params(heads: int, head_dim: int, feature_dim: int) -> dict[str, Tensor]:
    """W (H, F, d): the identity (rectangular when F != d) for every head; b (H, F): zeros."""
    return {
        "W": torch.eye(feature_dim, head_dim).expand(heads, feature_dim, head_dim).clone(),
        "b": torch.zeros(heads, feature_dim),
    }


def hedgehog_features(x: Tensor, W: Tensor, b: Tensor, form: str) -> tuple[Tensor, Tensor]:
    """x: (B, H, N, d) -> (phi (B, H, N, 2F), l (B, H, N)) in W's dtype, true features phi * exp(l)."""
    u = torch.einsum("bhnd,hfd->bhnf", x.to(W.dtype), W) + b[:, None, :]  # (B, H, N, F)
    if form == "exp":
        top = u.detach().abs().amax(dim=-1, keepdim=True)  # (B, H, N, 1)
        return torch.cat([torch.exp(u - top), torch.exp(-u - top)], dim=-1), top.squeeze(-1)
    if form == "softmax":
        phi = torch.cat([torch.softmax(u, dim=-1), torch.softmax(-u, dim=-1)], dim=-1)
        return phi, u.new_zeros(u.shape[:-1])
    raise ValueError(f"hedgehog feature_map must be one of {FEATURE_MAPS}, got {form!r}")
