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

from collections.abc import Sequence

from torch import Tensor, nn

from attentions.hedgehog.features import hedgehog_features
from attentions.luna.fit import distill_weights
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
    """Train W, b so Hedgehog's weights match the teacher's, with LUNA's distillation loop
    (`attentions.luna.fit.distill_weights`); final_loss: the last step's, before update."""

    def row_weights(q: Tensor, k: Tensor, rows: Tensor) -> Tensor:
        return hedgehog_row_weights(q, k, W, b, form, rows, teacher.causal, window, log_scale)

    params = [W, b] + ([] if log_scale is None else [log_scale])
    return distill_weights("hedgehog", params, row_weights, calib_batches, teacher, spec, W.device)
