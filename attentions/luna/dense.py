"""LUNA impl `naive`: phi of the whole sequence at once, then linear attention (the simple fast path).

    non-causal: out = phi(q) S / (phi(q) . z + eps),  S = phi(k)^T v (D, d), z = phi(k)^T 1 (D,)
    causal:     explicit weights A = phi(q) phi(k)^T masked to j <= i (N, N), out = A v / (A 1 + eps)

Materializes every MLP activation (B, H, N, m, G, hidden) and, causal, the (N, N) weights; the
`chunked` impl computes the same function block by block. Padded keys (key_padding_mask False)
have phi(k) = 0; with ch_rms the channel RMS pools over real tokens only.
"""

from __future__ import annotations

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
) -> Tensor:
    """q, k, v: (B, H, N, d); mask (B, N) bool, True = real -> (B, H, N, d) in the weights' dtype."""
    if ch_rms and causal:
        raise ValueError("ch_rms pools over all tokens; it has no causal form")
    phi_q, phi_k = luna_features(q, weights, nonneg), luna_features(k, weights, nonneg)  # (B, H, N, D)
    if ch_rms:
        phi_q, phi_k = channel_rms(phi_q, eps, mask), channel_rms(phi_k, eps, mask)
    if mask is not None:
        phi_k = phi_k * mask[:, None, :, None].to(phi_k.dtype)
    v = v.to(phi_q.dtype)
    if causal:
        scores = (phi_q @ phi_k.transpose(-1, -2)).tril()  # (B, H, N, N)
        return (scores @ v) / (scores.sum(dim=-1, keepdim=True) + eps)
    state, norm = phi_k.transpose(-1, -2) @ v, phi_k.sum(dim=-2)  # (B, H, D, d), (B, H, D)
    return (phi_q @ state) / (phi_q @ norm[..., None] + eps)
