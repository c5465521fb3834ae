"""Row-wise KL(A || Â) between exact softmax weights A and a variant's own attention weights Â.

The contract gives no variant a "weights" method, so Â is recovered from the forward itself: for a
variant whose output is linear in v (o = Â v, as in softmax, linear, Performer, LUNA and Nystrom
attention), calling it with one-hot values v = e_j (d keys per call, N / d calls) returns the
columns Â[:, j]. Two checks decide whether Â is a proper distribution the KL is defined for:

    linear in v:   ||Â v - out|| / ||out|| <= LINEAR_TOL on real rows (fails for Luna nested
                   attention, whose packed context depends on v)
    distribution:  Â >= -NEG_TOL, real rows sum to 1 within SUM_TOL, padded keys get no mass
                   (fails for Nystrom: its pseudo-inverse makes weights negative)

    KL = mean over real query rows (and batch, heads) of sum_j A_ij (log A_ij - log max(Â_ij, FLOOR))

A is computed in fp64 from q, k (scale 1/sqrt(d), padded keys masked). Â is built whole, (B, H, N,
N): only for small problems (the `captured` source asks for it with `probe_weights`).
Shapes: q, k, v, out (B, H, N, d); key_padding_mask (B, N) bool, True = real, or None.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

LINEAR_TOL = 1e-3
NEG_TOL = 1e-5
SUM_TOL = 1e-3
FLOOR = 1e-12  # Â entries below this count as FLOOR inside the log (a zero weight where A > 0)
MAX_ELEMENTS = 1 << 26  # B * H * N * N above this: not probed (memory)

Forward = Callable[[Tensor, Tensor, Tensor], Tensor]


@dataclass(frozen=True)
class WeightsKL:
    """kl: the mean row KL in nats, or None with `reason` saying why it is not defined."""

    kl: float | None
    reason: str = ""


def probe_weights(fwd: Forward, q: Tensor, k: Tensor) -> Tensor:
    """Â (B, H, N, N) fp64 of a forward linear in v: column j is the output for v = e_j."""
    B, H, N, d = q.shape
    cols = []
    for start in range(0, N, d):
        width = min(d, N - start)
        v = torch.zeros(B, H, N, d, dtype=q.dtype, device=q.device)
        idx = torch.arange(width, device=q.device)
        v[:, :, start + idx, idx] = 1
        with torch.no_grad():
            cols.append(fwd(q, k, v)[..., :width].double())
    return torch.cat(cols, dim=-1)


def exact_weights(q: Tensor, k: Tensor, causal: bool, mask: Tensor | None) -> Tensor:
    """Softmax weights (B, H, N, N) in fp64; padded keys (mask False) get 0."""
    scores = q.double() @ k.double().transpose(-1, -2) / math.sqrt(q.shape[-1])
    N = q.shape[-2]
    if causal:
        upper = torch.ones(N, N, dtype=torch.bool, device=q.device).triu(1)
        scores = scores.masked_fill(upper, float("-inf"))
    if mask is not None:
        scores = scores.masked_fill(~mask.to(q.device)[:, None, None, :], float("-inf"))
    return torch.softmax(scores, dim=-1)


def weights_kl(
    fwd: Forward, q: Tensor, k: Tensor, v: Tensor, causal: bool, mask: Tensor | None = None
) -> WeightsKL:
    """Mean row KL(A || Â) over real query rows, or None with the reason (see the module doc)."""
    B, H, N, _ = q.shape
    if B * H * N * N > MAX_ELEMENTS:
        return WeightsKL(None, f"not probed: B*H*N*N = {B * H * N * N} > {MAX_ELEMENTS}")
    with torch.no_grad():
        out = fwd(q, k, v)
    approx = probe_weights(fwd, q, k)  # (B, H, N, N)
    real_rows = torch.ones(B, N, dtype=torch.bool, device=q.device) if mask is None else mask.to(q.device)
    sel = real_rows[:, None, :].expand(B, H, N)  # (B, H, N) real query rows
    recon, target = (approx @ v.double())[sel], out.double()[sel]
    gap = float((recon - target).norm() / target.norm().clamp_min(1e-30))
    if not gap <= LINEAR_TOL:
        return WeightsKL(None, f"output not linear in v (weights reproduce it to {gap:.2g} relative)")
    rows = approx[sel]  # (R, N)
    keys = real_rows[:, None, None, :].expand(B, H, N, N)[sel]  # (R, N) True = real key
    padded_mass = float(rows[~keys].abs().max()) if bool((~keys).any()) else 0.0
    low, sums = float(rows.min()), rows.sum(dim=-1)
    off = float((sums - 1).abs().max())
    if low < -NEG_TOL or off > SUM_TOL or padded_mass > NEG_TOL:
        why = f"min weight {low:.2g}, row sums off by {off:.2g}, mass on padded keys {padded_mass:.2g}"
        return WeightsKL(None, f"weights are not a distribution ({why})")
    exact = exact_weights(q, k, causal, mask)[sel]  # (R, N)
    kl = (torch.xlogy(exact, exact) - exact * rows.clamp_min(FLOOR).log()).sum(dim=-1)
    return WeightsKL(float(kl.mean()))
