"""Distilling Hedgehog to exact softmax: LUNA's protocol (attentions/luna/fit.py) on Hedgehog's weights.

For step t, calibration batch t mod len(batches) (q, k, v: (B, H, Nc, d), fp32) and R query rows
sampled without replacement (torch.Generator seeded by `spec.seed`):

    P = teacher.weights(q, k, rows)          (B, H, R, Nc) softmax weights (causal: keys j > r masked)
    A = Hedgehog's weights of those rows     exactly those of its forward: the feature scores
        normalized over the visible keys, or with `window` the hybrid's (exact scores in the window,
        feature scores outside, one normalizer): window_linear.weights.hybrid_row_weights
    loss = mean_{b,h,r} KL(P || A)  (+ spec.mse_weight * MSE(A v, P v))   luna.fit.distill_loss

This is Hedgehog's own objective (the paper trains the map by cross-entropy between softmax and
Hedgehog's attention weights, i.e. the same KL up to P's constant entropy). Adam(lr = spec.lr) over
W, b (and, with a window, the per-head log-weight of the feature scores) for spec.steps steps,
fp32 on the parameters' device. With `window` the map is fitted with the window in place, as
LoLCATs does.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from attentions.hedgehog.features import hedgehog_features
from attentions.luna.fit import distill_loss
from attentions.window_linear.weights import hybrid_row_weights
from harness.plugins.contract import FitResult, FitSpec, Teacher


def hedgehog_row_weights(
    q: Tensor, k: Tensor, W: Tensor, b: Tensor, form: str, rows: Tensor, causal: bool, window: int,
    log_scale: Tensor | None = None,
) -> Tensor:  # fmt: skip
    """Hedgehog's weights of query `rows` (R,) over all keys. q, k: (B, H, N, d) -> (B, H, R, N)."""
    phi_q, lq = hedgehog_features(q[:, :, rows], W, b, form)
    phi_k, lk = hedgehog_features(k, W, b, form)
    return hybrid_row_weights(q[:, :, rows], k, phi_q, lq, phi_k, lk, rows, causal, window, 0.0, log_scale)


def fit_hedgehog(
    W: nn.Parameter, b: nn.Parameter, form: str, window: int,
    calib_batches: Sequence[tuple[Tensor, Tensor, Tensor]], teacher: Teacher, spec: FitSpec,
    log_scale: nn.Parameter | None = None,
) -> FitResult:  # fmt: skip
    """Train W, b so Hedgehog's weights match the teacher's; final_loss: the last step's, before update."""
    if not calib_batches:
        raise ValueError("hedgehog fit needs at least one calibration batch")
    device = W.device
    batches = [tuple(t.to(device=device, dtype=torch.float32) for t in batch) for batch in calib_batches]
    optimizer = torch.optim.Adam([W, b] + ([] if log_scale is None else [log_scale]), lr=spec.lr)
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
            weights = hedgehog_row_weights(q, k, W, b, form, rows, teacher.causal, window, log_scale)
            loss, _ = distill_loss(weights, target, v, spec.mse_weight)
            value = loss.item()
            if not math.isfinite(value):
                raise FloatingPointError(f"hedgehog fit diverged at step {step}: loss {value}")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            losses.append(value)
    seconds = time.perf_counter() - start
    return FitResult(spec.steps, seconds, losses[-1] if losses else math.nan, losses)
