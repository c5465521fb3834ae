"""Matmul FLOPs of `chunked.causal_pass`, block by block as it runs (FlopCounterMode counts the same)."""

from __future__ import annotations

from harness.measure.costs import matmul_flops


def causal_pass_flops(n: int, D: int, d: int, window: int, chunk: int) -> tuple[float, float]:
    """(forward, backward) matmul FLOPs per (batch, head) of one causal_pass over n tokens.

    Block [s, e) with tile keys [t0, e), t0 = max(s - W + 1, 0): window scores q k^T (c x d x t) and
    their tile @ [v, 1] (c x t x (d + 1)) when W >= 1; feature scores (c x D x t) and their tile @ [v, 1]
    (c x t x (d + 1)); the state read (c x D x (d + 1)) once
    the state holds keys, and the state update (D x u x (d + 1)) with the u keys it gains (none after
    the last block). Backward: every operand needs a gradient, two products per forward product.
    """
    span0, fwd, carried = max(window - 1, 0), 0.0, 0
    for s in range(0, n, chunk):
        e = min(s + chunk, n)
        c, t = e - s, e - max(s - span0, 0)
        fwd += matmul_flops(c, d, t) + matmul_flops(c, t, d + 1) if window > 0 else 0.0  # window part
        fwd += matmul_flops(c, D, t) + matmul_flops(c, t, d + 1)  # linear part
        fwd += matmul_flops(c, D, d + 1) if carried > 0 else 0.0
        new_carried = max(e - span0, 0) if e < n else carried
        if new_carried > carried:
            fwd += matmul_flops(D, new_carried - carried, d + 1)
            carried = new_carried
    return fwd, 2 * fwd


def hybrid_flops(n: int, D: int, d: int, window: int, chunk: int, causal: bool) -> tuple[float, float]:
    """(forward, backward) of chunked.hybrid_attention_chunked: one pass causal, two non-causal."""
    fwd, bwd = causal_pass_flops(n, D, d, window, chunk)
    return (fwd, bwd) if causal else (2 * fwd, 2 * bwd)
