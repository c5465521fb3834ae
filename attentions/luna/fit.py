"""Distilling LUNA to exact softmax attention (the untimed `fit` step before accuracy is measured).

For step t, calibration batch t mod len(batches) (q, k, v: (B, H, Nc, d), fp32) and R query rows
sampled without replacement (torch.Generator seeded by `spec.seed`):

    P = teacher.weights(q, k, rows)                                    (B, H, R, Nc) softmax weights
    A = (phi(q_r) . phi(k_j)) / (sum_j' phi(q_r) . phi(k_j') + eps)     same shape, LUNA's weights,
        with keys j > r masked to 0 when the teacher is causal, exactly the weights LUNA's forward uses
        with `window` > 0 the hybrid's weights (window_linear.weights.hybrid_row_weights: exact softmax
        scores inside the window, one normalizer), so the map is fitted with the window in place
    loss = mean_{b,h,r} KL(P || A) = sum_j P (log P - log(A + TINY))   (+ mse_weight * MSE(A v, P v))

Adam(lr = spec.lr) over all the variant's parameters, spec.steps steps, fp32 on the parameters'
device whatever the case dtype. phi(k) is computed per block with checkpointing
(chunked.features_blockwise), so the MLP activations of the calibration batch are never all held.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Sequence

import torch
from torch import Tensor, nn

from attentions.luna.features import channel_rms
from attentions.window_linear.weights import hybrid_row_weights
from harness.plugins.contract import FitResult, FitSpec, Teacher

TINY = 1e-9  # floor inside log(A): ReLU features make some LUNA weights exactly 0


def luna_row_weights(phi_q: Tensor, phi_k: Tensor, rows: Tensor, causal: bool, eps: float) -> Tensor:
    """LUNA's attention weights of the query rows. phi_q: (B, H, R, D) features of q[rows];
    phi_k: (B, H, N, D); rows: (R,) -> (B, H, R, N), each row summing to <= 1 (eps in the denominator)."""
    scores = phi_q @ phi_k.transpose(-1, -2)  # (B, H, R, N), >= 0 when features are non-negative
    if causal:
        cols = torch.arange(phi_k.shape[-2], device=phi_k.device)
        scores = scores.masked_fill(cols[None, :] > rows[:, None], 0.0)
    return scores / (scores.sum(dim=-1, keepdim=True) + eps)


def distill_loss(
    weights: Tensor, target: Tensor, v: Tensor | None = None, mse_weight: float = 0.0
) -> tuple[Tensor, Tensor]:
    """Mean row-wise KL(target || weights) (+ mse_weight * output MSE); both (B, H, R, N).

    Returns (loss, kl). v: (B, H, N, d), needed only when mse_weight > 0.
    """
    kl = (torch.xlogy(target, target) - target * torch.log(weights + TINY)).sum(dim=-1).mean()
    loss = kl
    if mse_weight > 0:
        assert v is not None, "the output MSE term needs v"
        loss = loss + mse_weight * (weights @ v - target @ v).pow(2).mean()
    return loss, kl


def distill_weights(
    name: str,
    parameters: Iterable[nn.Parameter],
    row_weights: Callable[[Tensor, Tensor, Tensor], Tensor],
    calib_batches: Sequence[tuple[Tensor, Tensor, Tensor]],
    teacher: Teacher,
    spec: FitSpec,
    device: torch.device | str,
) -> FitResult:
    """The distillation loop of the learnable feature maps (LUNA, Hedgehog): Adam on `parameters`,
    one calibration batch per step in turn, `spec.rows` seeded random query rows, `distill_loss`
    between the teacher's weights and `row_weights(q, k, rows)` (B, H, R, N). final_loss is the
    last step's loss, measured before its update; a non-finite loss raises FloatingPointError."""
    if not calib_batches:
        raise ValueError(f"{name} fit needs at least one calibration batch")
    batches = [tuple(t.to(device=device, dtype=torch.float32) for t in batch) for batch in calib_batches]
    optimizer = torch.optim.Adam(list(parameters), lr=spec.lr)
    gen = torch.Generator().manual_seed(spec.seed)
    losses: list[float] = []
    start = time.perf_counter()
    with torch.enable_grad():
        for step in range(spec.steps):
            q, k, v = batches[step % len(batches)]
            n = q.shape[-2]
            rows = torch.randperm(n, generator=gen)[: min(spec.rows, n)].sort().values.to(device)
            with torch.no_grad():
                target = teacher.weights(q, k, rows)  # (B, H, R, N)
            loss, _ = distill_loss(row_weights(q, k, rows), target, v, spec.mse_weight)
            value = loss.item()
            if not math.isfinite(value):
                raise FloatingPointError(f"{name} fit diverged at step {step}: loss {value}")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            losses.append(value)
    seconds = time.perf_counter() - start
    return FitResult(
        steps=spec.steps, seconds=seconds, final_loss=losses[-1] if losses else math.nan, losses=losses
    )


def fit_luna(
    features: Callable[[Tensor], Tensor],
    parameters: Iterable[nn.Parameter],
    calib_batches: Sequence[tuple[Tensor, Tensor, Tensor]],
    teacher: Teacher,
    spec: FitSpec,
    *,
    eps: float,
    ch_rms: bool,
    device: torch.device | str,
    window: int = 0,
    log_scale: Tensor | None = None,
) -> FitResult:
    """Train `parameters` so LUNA's weights match the teacher's (`distill_weights`).

    features: x (B, H, N, d) -> phi (B, H, N, D), built from `parameters`.
    """

    def row_weights(q: Tensor, k: Tensor, rows: Tensor) -> Tensor:
        if ch_rms:  # the channel RMS pools over every token, so phi(q) is needed for all of them
            phi_q = channel_rms(features(q), eps)[:, :, rows]
            phi_k = channel_rms(features(k), eps)
        else:
            phi_q, phi_k = features(q[:, :, rows]), features(k)
        if window > 0:  # the hybrid's weights: exact scores in the window, one normalizer
            zeros = phi_k.new_zeros(phi_k.shape[:-1])
            lq, lk = zeros[:, :, rows], zeros
            return hybrid_row_weights(
                q[:, :, rows], k, phi_q, lq, phi_k, lk, rows, teacher.causal, window, eps, log_scale
            )
        return luna_row_weights(phi_q, phi_k, rows, teacher.causal, eps)

    return distill_weights("luna", parameters, row_weights, calib_batches, teacher, spec, device)
