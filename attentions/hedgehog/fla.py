"""Hedgehog impl `fla`: the feature map here (fp32), the causal linear attention in fla-core's kernel.

fla's own `fla.modules.feature_map.HedgehogFeatureMap` is not used: it is one nn.Linear(d, d) shared
by the heads and computes softmax([2u, -2u]) over all 2d features jointly, neither the paper's map
nor LoLCATs' (two softmaxes); W here is per head. What runs in fla is `fla.ops.simple_gla.chunk_simple_gla`
(the kernel `fla.ops.linear_attn.chunk_linear_attn` wraps) with its scalar log-decay g used for the
exact stabilizer of window_linear/chunked.py: with K_t the running max of the keys' log-scales,

    keys  phi(k_j) exp(l_j - K_j)     queries phi(q_i) exp(-l_i)     g_t = K_{t-1} - K_t <= 0

the kernel's decay between key j and query i is exp(K_j - K_i) <= 1, so its output row i is
exp(-l_i - K_i) times the true sum_{j<=i} (phi(q_i) . phi(k_j)) [v_j, 1]: numerator and normalizer
in one call (v with a column of ones), every term <= 1, strictly causal. Inputs (B, N, H, d), fla's
layout; bf16 (fp16 would overflow the normalizer column, which reaches N); no window, no non-causal
kernel (both: impl chunked).
"""

from __future__ import annotations

import importlib

import torch
from torch import Tensor

from attentions.hedgehog.features import hedgehog_features
from attentions.window_linear.chunked import normalize


def hedgehog_attention_fla(
    q: Tensor, k: Tensor, v: Tensor, W: Tensor, b: Tensor, form: str, mask: Tensor | None = None
) -> Tensor:
    """Causal Hedgehog. q, k, v: (B, N, H, d) bf16; mask (B, N) bool, True = real -> (B, N, H, d)."""
    kernel = importlib.import_module("fla.ops.simple_gla").chunk_simple_gla
    phi_q, lq = hedgehog_features(q.transpose(1, 2), W, b, form)  # (B, H, N, D) fp32, (B, H, N)
    phi_k, lk = hedgehog_features(k.transpose(1, 2), W, b, form)
    if mask is not None:
        real = mask[:, None, :]
        phi_k = torch.where(real[..., None], phi_k, torch.zeros_like(phi_k))
        lk = torch.where(real, lk, torch.zeros_like(lk))
    K = torch.cummax(lk, dim=-1).values  # (B, H, N)
    fk = phi_k * torch.exp(lk - K)[..., None]
    g = torch.cat([torch.zeros_like(K[..., :1]), K[..., :-1] - K[..., 1:]], dim=-1)  # (B, H, N), <= 0
    v1 = torch.cat([v, v.new_ones(v.shape[:-1] + (1,))], dim=-1)  # (B, N, H, d + 1)
    o, _ = kernel(
        phi_q.transpose(1, 2).to(v.dtype).contiguous(), fk.transpose(1, 2).to(v.dtype).contiguous(), v1,
        g=g.transpose(1, 2).contiguous().float(), scale=1.0,
    )  # fmt: skip
    o = o.float()
    return normalize(o).to(v.dtype)
