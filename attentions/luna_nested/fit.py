"""Distillation of Luna nested attention to exact softmax (untimed, fp32, deterministic).

Trained: the pack queries P_q (H, l, d), and W_k, W_v (H, d, d) when untied. On every
calibration batch, `spec.rows` query rows are sampled once (generator seeded with `spec.seed`)
and the teacher's weights and outputs for them are computed once; step s uses batch s mod n.

Losses (mean over batch, heads and sampled rows):
- non-causal: the effective weights are exact and row-stochastic,
      W_eff = softmax_l(q_R K'^T / sqrt(d)) softmax_N(P_q k^T / sqrt(d))     (R x N),
  loss = KL(teacher || W_eff) + spec.mse_weight * MSE(W_eff (v W_v), teacher outputs).
  log W_eff is floored at params.eps. W_v only changes the values, so with mse_weight = 0 it
  receives no gradient and stays at its init (identity + noise).
- causal: W_eff[t, j] = (1/t) alpha_t . A_j is not row-stochastic (its row sum is the scale of
  the output), so a KL against a normalized W_eff would ignore that scale. The loss is the
  output MSE against the teacher alone (spec.mse_weight is not used); the rows' outputs come
  from the same chunked causal forward that is measured.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from typing import Any, Protocol

import torch
from torch import Tensor, nn

from harness.plugins.contract import FitResult, FitSpec, Teacher


class NestedModel(Protocol):
    """What the fit reads of the variant (LunaNestedAttention), without importing it."""

    P_q: Tensor  # (H, l, d)
    W_k: Tensor | None  # (H, d, d)
    W_v: Tensor | None
    params: Any  # LunaNestedParams: eps

    def attention_fp32(self, q: Tensor, k: Tensor, v: Tensor, causal: bool) -> Tensor: ...

    def parameters(self) -> Iterator[nn.Parameter]: ...


def noncausal_rows(
    q: Tensor, k: Tensor, v: Tensor, P_q: Tensor, W_k: Tensor | None, W_v: Tensor | None, rows: Tensor
) -> tuple[Tensor, Tensor]:
    """Effective weights and outputs of the non-causal form on sampled query rows.

    q, k, v: (B, H, N, d) fp32; P_q: (H, l, d); W_k, W_v: (H, d, d) | None; rows: (R,).
    Returns W_eff (B, H, R, N), row-stochastic, and the outputs (B, H, R, d) = W_eff (v W_v).
    """
    scale = q.shape[-1] ** -0.5
    pack = torch.softmax((P_q * scale) @ k.transpose(-1, -2), dim=-1)  # (B, H, l, N)
    packed = pack @ v  # (B, H, l, d)
    keys = packed if W_k is None else packed @ W_k
    alpha = torch.softmax((q[:, :, rows] * scale) @ keys.transpose(-1, -2), dim=-1)  # (B, H, R, l)
    w_eff = alpha @ pack  # (B, H, R, N)
    values = v if W_v is None else v @ W_v
    return w_eff, w_eff @ values


def kl_rows(target: Tensor, approx: Tensor, eps: float) -> Tensor:
    """Mean over rows of KL(target || approx); both (..., N) with rows summing to 1."""
    kl = torch.xlogy(target, target) - target * torch.log(approx.clamp_min(eps))
    return kl.sum(dim=-1).mean()


def fit_luna_nested(
    model: NestedModel,
    calib_batches: Sequence[tuple[Tensor, Tensor, Tensor]],
    teacher: Teacher,
    spec: FitSpec,
) -> FitResult:
    """Adam on `model`'s parameters for `spec.steps` steps; returns the loss of every step."""
    if not calib_batches:
        raise ValueError("fit needs at least one calibration batch")
    start = time.perf_counter()
    device = model.P_q.device
    gen = torch.Generator().manual_seed(spec.seed)
    targets = []
    with torch.no_grad():
        for q, k, v in calib_batches:
            q, k, v = (x.to(device=device, dtype=torch.float32) for x in (q, k, v))
            N = q.shape[-2]
            rows = torch.randperm(N, generator=gen)[: min(spec.rows, N)].sort().values.to(device)
            w = None if teacher.causal else teacher.weights(q, k, rows)
            targets.append((q, k, v, rows, w, teacher.outputs(q, k, v, rows)))

    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=spec.lr)
    losses: list[float] = []
    with torch.enable_grad():
        for step in range(spec.steps):
            q, k, v, rows, w, out_t = targets[step % len(targets)]
            if teacher.causal:
                out = model.attention_fp32(q, k, v, causal=True)[:, :, rows]
                loss = (out - out_t).pow(2).mean()
            else:
                w_eff, out = noncausal_rows(q, k, v, model.P_q, model.W_k, model.W_v, rows)
                loss = kl_rows(w, w_eff, model.params.eps)
                if spec.mse_weight:
                    loss = loss + spec.mse_weight * (out - out_t).pow(2).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(loss.item())
    return FitResult(
        steps=spec.steps,
        seconds=time.perf_counter() - start,
        final_loss=losses[-1] if losses else float("nan"),
        losses=losses,
    )
