"""Performer's FAVOR+ (Choromanski et al. 2021), written for reading: the reference of `performer`.

For a token x in R^d (a query or key of one head) and W (M, d) of random feature rows w_r:

    x'      = x * d^(-1/4)
    phi(x)  = M^(-1/2) * [exp(w_r . x' - |x'|^2 / 2)]_{r=1..M}        (positive random features)
    K_ij    = phi(q_i) . phi(k_j)                    ~= exp(q_i . k_j / sqrt(d))  (unbiased)
    out_i   = sum_j K_ij v_j / sum_j K_ij            (j <= i when causal)

`favor_attention` builds the full (N, N) matrix K, so it is O(N^2): for tests only. K is formed
in log space (per-token maxima pulled out of each exp) so large inputs cannot overflow, then
each row is normalized over its visible keys (j <= i when causal, never a padded key) with a
softmax of log K. No eps, no stabilizer that could couple tokens.

`package_attention` writes out what performer-pytorch 1.1.4's `FastAttention` computes (impl
`package`), which is not the estimator above: see its docstring.

`favor_attention_linear` is the non-causal linear-time form phi(q) (phi(k)^T v) / phi(q) phi(k)^T 1
the variant computes, unstabilized (it overflows for large inputs): the cost-model reference.

Everything is computed in fp32, or in the input dtype when that is wider (fp64 in tests).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor


def _dtype(x: Tensor) -> torch.dtype:
    return torch.promote_types(x.dtype, torch.float32)


def feature_logits(x: Tensor, W: Tensor) -> Tensor:
    """log(sqrt(M) * phi(x)) = W x' - |x'|^2 / 2. x: (B, H, N, d), W: (M, d) -> (B, H, N, M)."""
    x = x.to(_dtype(x)) * x.shape[-1] ** -0.25
    return x @ W.to(x.dtype).T - (x * x).sum(dim=-1, keepdim=True) / 2


def favor_features(x: Tensor, W: Tensor) -> Tensor:
    """phi(x), unstabilized (overflows for large inputs). (B, H, N, d) -> (B, H, N, M)."""
    return torch.exp(feature_logits(x, W)) / math.sqrt(W.shape[0])


def favor_log_kernel(q: Tensor, k: Tensor, W: Tensor) -> Tensor:
    """log K_ij = log(phi(q_i) . phi(k_j)). q, k: (B, H, N, d) -> (B, H, N, N)."""
    a, b = feature_logits(q, W), feature_logits(k, W)  # (B, H, N, M)
    a_max, b_max = a.amax(dim=-1, keepdim=True), b.amax(dim=-1, keepdim=True)  # (B, H, N, 1)
    kernel = torch.exp(a - a_max) @ torch.exp(b - b_max).transpose(-1, -2) / W.shape[0]
    return torch.log(kernel) + a_max + b_max.transpose(-1, -2)


def favor_attention(
    q: Tensor, k: Tensor, v: Tensor, W: Tensor, causal: bool, key_padding_mask: Tensor | None = None
) -> Tensor:
    """FAVOR+ attention. q, k, v: (B, H, N, d), W: (M, d), key_padding_mask: (B, N) bool, True =
    real -> (B, H, N, d). A row with no visible key (a padded query) gets the lowest float
    everywhere: finite, unspecified."""
    log_k = favor_log_kernel(q, k, W)
    n = log_k.shape[-1]
    hidden = torch.zeros(n, n, dtype=torch.bool, device=log_k.device)
    if causal:
        hidden = torch.ones(n, n, dtype=torch.bool, device=log_k.device).triu(1)
    if key_padding_mask is not None:
        hidden = hidden | ~key_padding_mask[:, None, None, :]
    log_k = log_k.masked_fill(hidden, torch.finfo(log_k.dtype).min)
    weights = torch.softmax(log_k, dim=-1)  # K_ij / sum_j K_ij
    return weights @ v.to(weights.dtype)


def package_attention(q: Tensor, k: Tensor, v: Tensor, W: Tensor, causal: bool) -> Tensor:
    """performer-pytorch 1.1.4 `FastAttention` written out (it is not the naive FAVOR+ estimator).

    phi(x) = M^(-1/2) (exp(x' W^T - |x'|^2 / 2 - s) + 1e-4), x' = x d^(-1/4), with s the max of
    x' W^T over features (queries) or over all keys and features of a (batch, head) (keys).
    Causal denominators add 1e-6 to every feature of the key prefix sum. fp32 (B, H, N, d).
    """
    W, d = W.float(), q.shape[-1]

    def features(x: Tensor, dims: tuple[int, ...]) -> Tensor:
        xs = x.float() * d**-0.25
        proj = xs @ W.T  # (B, H, N, M)
        stab = proj.amax(dim=dims, keepdim=True).detach()
        return (torch.exp(proj - (xs * xs).sum(-1, keepdim=True) / 2 - stab) + 1e-4) / math.sqrt(W.shape[0])

    phi_q, phi_k = features(q, (-1,)), features(k, (-1, -2))
    weights = phi_q @ phi_k.transpose(-1, -2)  # (B, H, N, N)
    if not causal:
        return (weights @ v.float()) / weights.sum(-1, keepdim=True)
    weights = weights.tril()
    return (weights @ v.float()) / (weights.sum(-1, keepdim=True) + 1e-6 * phi_q.sum(-1, keepdim=True))


def reference(
    variant: Any, q: Tensor, k: Tensor, v: Tensor, causal: bool, key_padding_mask: Tensor | None = None
) -> Tensor:
    """The contract's reference of impl `native`: FAVOR+ with the instance's W (eps must be 0)."""
    assert variant.params.eps == 0, "naive FAVOR+ has no eps; compare at the default eps = 0"
    return favor_attention(q, k, v, variant.projection, causal, key_padding_mask)


def package_reference(
    variant: Any, q: Tensor, k: Tensor, v: Tensor, causal: bool, key_padding_mask: Tensor | None = None
) -> Tensor:
    """The contract's reference of impl `package` (no masking): `package_attention` with its W."""
    assert key_padding_mask is None, "performer-pytorch's FastAttention takes no key-padding mask"
    return package_attention(q, k, v, variant.projection, causal)


def favor_attention_linear(q: Tensor, k: Tensor, v: Tensor, W: Tensor) -> Tensor:
    """Non-causal FAVOR+ in linear time, unstabilized. q, k, v: (B, H, N, d) -> (B, H, N, d)."""
    phi_q, phi_k = favor_features(q, W), favor_features(k, W)  # (B, H, N, M)
    state = phi_k.transpose(-1, -2) @ v.to(phi_k.dtype)  # (B, H, M, d)
    norm = phi_k.sum(dim=-2)  # (B, H, M)
    return (phi_q @ state) / (phi_q @ norm[..., None])


def softmax_attention(q: Tensor, k: Tensor, v: Tensor, causal: bool) -> Tensor:
    """Exact softmax attention, the function FAVOR+ approximates. (B, H, N, d) -> (B, H, N, d)."""
    dtype = _dtype(q)
    scores = q.to(dtype) @ k.to(dtype).transpose(-1, -2) / math.sqrt(q.shape[-1])
    if causal:
        n = scores.shape[-1]
        future = torch.ones(n, n, dtype=torch.bool, device=scores.device).triu(1)
        scores = scores.masked_fill(future, -math.inf)
    return torch.softmax(scores, dim=-1) @ v.to(dtype)
