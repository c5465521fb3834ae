"""The delta rule, token by token, written for reading: the fp32 reference of `deltanet`.

Per batch and head, the state S (d_v x d_k) starts at 0; for t = 1..N:

    k_t = k_t / |k_t|,  q_t = q_t / |q_t| / sqrt(d)        (L2 norm with 1e-6 under the root)
    beta_t = sigmoid(beta_logit)            (the head's learned writing strength; 0 on padded tokens)
    alpha_t = exp(-exp(A_log)) gated, 1 otherwise        (the head's decay; 1 on padded tokens)
    S_t = alpha_t S_{t-1} (I - beta_t k_t k_t^T) + beta_t v_t k_t^T
    o_t = S_t q_t

(DeltaNet, Yang et al. 2024; Gated DeltaNet, Yang et al. 2025.) S (I - beta k k^T) is written as
S - beta (S k) k^T, the same product. Causal by construction; N sequential steps, for tests only.
fp32 (fp64 for fp64 inputs).
"""

from __future__ import annotations

import torch
from torch import Tensor


def unit(x: Tensor) -> Tensor:
    """x / sqrt(sum x^2 + 1e-6) along the last dim."""
    return x / torch.sqrt((x**2).sum(dim=-1, keepdim=True) + 1e-6)


def delta_rule_recurrent(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    beta: Tensor,
    alpha: Tensor | None,
    key_padding_mask: Tensor | None = None,
) -> Tensor:
    """q, k: (B, H, N, d_k); v: (B, H, N, d_v); beta, alpha: (H,) per head (alpha None: ungated);
    key_padding_mask (B, N) bool, True = real -> (B, H, N, d_v) in fp32 (fp64 for fp64 inputs)."""
    acc = torch.promote_types(q.dtype, torch.float32)
    q, k, v = q.to(acc), k.to(acc), v.to(acc)
    B, H, N, dk = q.shape
    q = unit(q) / dk**0.5
    k = unit(k)
    betas = beta.to(acc)[None, :, None].expand(B, H, N)  # (B, H, N): beta_t of every token
    alphas = torch.ones_like(betas) if alpha is None else alpha.to(acc)[None, :, None].expand(B, H, N)
    if key_padding_mask is not None:
        real = key_padding_mask[:, None, :].to(acc)  # (B, 1, N)
        betas = betas * real  # a padded token writes nothing ...
        alphas = alphas * real + (1 - real)  # ... and does not decay the state
    steps = zip(
        q[..., None].unbind(2),  # q_t, k_t, v_t as column vectors (B, H, d, 1)
        k[..., None].unbind(2),
        v[..., None].unbind(2),
        betas[..., None, None].unbind(2),  # (B, H, 1, 1)
        alphas[..., None, None].unbind(2),
        strict=True,
    )
    S = torch.zeros(B, H, v.shape[-1], dk, dtype=acc, device=q.device)
    outs = []
    for q_t, k_t, v_t, b_t, a_t in steps:
        S = a_t * (S - b_t * (S @ k_t) @ k_t.transpose(-1, -2)) + b_t * v_t @ k_t.transpose(-1, -2)
        outs.append((S @ q_t)[..., 0])
    return torch.stack(outs, dim=2)


def reference(
    variant: object, q: Tensor, k: Tensor, v: Tensor, causal: bool, key_padding_mask: Tensor | None = None
) -> Tensor:
    """The contract's reference of `deltanet`, with the instance's beta_logit and (gated) A_log."""
    if not causal:
        raise ValueError("deltanet is a causal recurrence: it has no non-causal form")
    beta = torch.sigmoid(variant.beta_logit)
    alpha = torch.exp(-torch.exp(variant.A_log)) if variant.params.gated else None
    return delta_rule_recurrent(q, k, v, beta, alpha, key_padding_mask)
