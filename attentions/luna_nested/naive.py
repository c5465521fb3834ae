"""Luna, linear unified nested attention (Ma et al. 2021), written for reading: the fp32 reference.

Per (batch, head), with q, k, v: (N, d), learned pack queries P_q: (l, d) and scale = d^-1/2:

Non-causal (pack, then unpack):
    pack weights  Wp = softmax_N(P_q k^T * scale)            (l, N)   rows sum to 1
    packed        P' = Wp v                                  (l, d)
    unpack keys   K' = P' W_k  (tied: W_k = I)               (l, d)
    unpack values V' = P' W_v  (tied: W_v = I)               (l, d)
    out           = softmax_l(q K'^T * scale) V'             (N, d)
    Effective weights on v: W_eff = softmax_l(q K'^T * scale) Wp  (N, N), row-stochastic.

Causal (official `LunarCausalAttention`, fairseq-apollo), t = 1..N the 1-based position:
    A     = softplus_beta(k P_q^T * scale), beta = ln 2    (N, l)  unnormalized, A = 1 at 0
    s_t   = (1/t) sum_{j<=t} (q_t . k_j * scale) A_j       (l,)
    alpha = softmax_l(s_t)                                  (l,)
    out_t = (1/t) sum_{j<=t} (alpha_t . A_j) v_j            (d,)
    Effective weights W[t, j] = (1/t) alpha_t . A_j for j <= t: not row-stochastic.

Key-padding mask (B, N) bool, True = real: a padded key takes no pack weight (non-causal: its
logit is the lowest float) or has A_j = 0 and does not count in t (causal: t = the number of real
keys j <= t, at least 1).

Everything here is O(N^2) or materializes per-position prefix sums: it exists for tests only.
Arithmetic is in P_q's dtype (fp32 in the variant; tests use fp64); inputs are cast to it.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

SOFTPLUS_BETA = math.log(2.0)  # official choice: softplus_beta(0) = 1


def softplus_ln2(x: Tensor) -> Tensor:
    """softplus_beta(x) = log(1 + exp(beta x)) / beta with beta = ln 2 (linear above beta x > 20)."""
    return F.softplus(x, beta=SOFTPLUS_BETA)


def pack_weights(k: Tensor, P_q: Tensor, mask: Tensor | None = None) -> Tensor:
    """Wp = softmax over the real keys of P_q k^T / sqrt(d). k: (B, H, N, d); P_q: (H, l, d);
    mask (B, N) bool or None -> (B, H, l, N)."""
    d = k.shape[-1]
    logits = P_q @ k.to(P_q.dtype).transpose(-1, -2) * d**-0.5
    if mask is not None:
        logits = torch.where(mask[:, None, None, :], logits, torch.finfo(logits.dtype).min)
    return torch.softmax(logits, dim=-1)


def unpack_kv(packed: Tensor, W_k: Tensor | None, W_v: Tensor | None) -> tuple[Tensor, Tensor]:
    """Unpack keys and values from P' (B, H, l, d); W_k, W_v: (H, d, d) or None (tied: identity)."""
    keys = packed if W_k is None else packed @ W_k
    values = packed if W_v is None else packed @ W_v
    return keys, values


def luna_nested_noncausal(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    P_q: Tensor,
    W_k: Tensor | None = None,
    W_v: Tensor | None = None,
    mask: Tensor | None = None,
) -> Tensor:
    """Non-causal Luna nested attention. q, k, v: (B, H, N, d) -> (B, H, N, d) in P_q's dtype."""
    d = q.shape[-1]
    packed = pack_weights(k, P_q, mask) @ v.to(P_q.dtype)  # (B, H, l, d)
    keys, values = unpack_kv(packed, W_k, W_v)
    alpha = torch.softmax(q.to(P_q.dtype) @ keys.transpose(-1, -2) * d**-0.5, dim=-1)  # (B, H, N, l)
    return alpha @ values


def pack_scores_causal(k: Tensor, P_q: Tensor) -> Tensor:
    """A = softplus_ln2(k P_q^T / sqrt(d)). k: (B, H, N, d); P_q: (H, l, d) -> (B, H, N, l)."""
    d = k.shape[-1]
    return softplus_ln2(k.to(P_q.dtype) @ P_q.transpose(-1, -2) * d**-0.5)


def causal_effective_weights(q: Tensor, k: Tensor, P_q: Tensor, mask: Tensor | None = None) -> Tensor:
    """W[t, j] = (1/t) alpha_t . A_j for j <= t, else 0. q, k: (B, H, N, d) -> (B, H, N, N)."""
    N, d = q.shape[-2:]
    q, k = q.to(P_q.dtype), k.to(P_q.dtype)
    A = pack_scores_causal(k, P_q)  # (B, H, N, l)
    t = torch.arange(1, N + 1, device=q.device, dtype=P_q.dtype)[:, None]  # (N, 1)
    if mask is not None:
        real = mask.to(P_q.dtype)[:, None, :, None]  # (B, 1, N, 1)
        A = A * real
        t = torch.cumsum(real, dim=-2).clamp_min(1)  # (B, 1, N, 1): real keys up to each position
    future = torch.ones(N, N, dtype=torch.bool, device=q.device).triu(1)
    scores = (q @ k.transpose(-1, -2) * d**-0.5).masked_fill(future, 0.0)  # (B, H, N, N)
    alpha = torch.softmax(scores @ A / t, dim=-1)  # (B, H, N, l)
    return (alpha @ A.transpose(-1, -2)).masked_fill(future, 0.0) / t


def luna_nested_causal(q: Tensor, k: Tensor, v: Tensor, P_q: Tensor, mask: Tensor | None = None) -> Tensor:
    """Causal Luna nested attention by its explicit (N, N) weights. -> (B, H, N, d) in P_q's dtype."""
    return causal_effective_weights(q, k, P_q, mask) @ v.to(P_q.dtype)


def prefix_average(x: Tensor, y: Tensor, z: Tensor) -> Tensor:
    """out_t = (1/t) x_t . sum_{j<=t} y_j z_j^T, by an explicit (N, d1, d2) cumulative sum.

    The structure of the official `efficient_causal_attention_parallel` (rewritten here).
    x, y: (B, H, N, d1); z: (B, H, N, d2) -> (B, H, N, d2).
    """
    N = x.shape[-2]
    states = torch.cumsum(y[..., :, None] * z[..., None, :], dim=-3)  # (B, H, N, d1, d2)
    t = torch.arange(1, N + 1, device=x.device, dtype=x.dtype)[:, None]
    return (x[..., None, :] @ states).squeeze(-2) / t


def luna_nested_causal_prefix(q: Tensor, k: Tensor, v: Tensor, P_q: Tensor) -> Tensor:
    """Causal Luna nested attention by explicit prefix sums, the official code's order. -> P_q's dtype."""
    d = q.shape[-1]
    q, k, v = (x.to(P_q.dtype) for x in (q, k, v))
    A = pack_scores_causal(k, P_q)  # (B, H, N, l)
    alpha = torch.softmax(prefix_average(q * d**-0.5, k, A), dim=-1)  # (B, H, N, l)
    return prefix_average(alpha, A, v)


def luna_nested_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    P_q: Tensor,
    causal: bool,
    W_k: Tensor | None = None,
    W_v: Tensor | None = None,
    key_padding_mask: Tensor | None = None,
) -> Tensor:
    """Luna nested attention (B, H, N, d) in P_q's dtype. Causal: no packed sequence, so no W_k, W_v."""
    if causal:
        return luna_nested_causal(q, k, v, P_q, key_padding_mask)
    return luna_nested_noncausal(q, k, v, P_q, W_k, W_v, key_padding_mask)


def reference(
    variant: Any, q: Tensor, k: Tensor, v: Tensor, causal: bool, key_padding_mask: Tensor | None = None
) -> Tensor:
    """The contract's reference of `luna_nested`, with the instance's P_q, W_k, W_v."""
    return luna_nested_attention(q, k, v, variant.P_q, causal, variant.W_k, variant.W_v, key_padding_mask)
