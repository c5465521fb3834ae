"""FLOP and byte helpers shared by the variants' cost models.

Conventions: a multiply-add counts as 2 FLOPs; costs are for the whole problem (batch x heads);
backward of a matmul-dominated computation costs 2x its forward (two matmuls per forward one),
so fwd_bwd = 3x fwd unless a variant knows better (FlashAttention recomputes: bwd = 2.5x fwd).
"""

from __future__ import annotations

from harness.plugins.contract import Problem

BYTES_PER_ELEMENT = {"fp32": 4, "fp16": 2, "bf16": 2}


def matmul_flops(m: int, k: int, n: int) -> float:
    """FLOPs of an (m x k) @ (k x n) product."""
    return 2.0 * m * k * n


def element_bytes(problem: Problem) -> int:
    return BYTES_PER_ELEMENT[problem.dtype]


def qkvo_bytes(problem: Problem) -> float:
    """Bytes of reading q, k, v and writing the output once."""
    return 4.0 * problem.batch * problem.heads * problem.seq_len * problem.head_dim * element_bytes(problem)


def scale_for_mode(fwd: float, problem: Problem, bwd_factor: float = 2.0) -> float:
    """Total cost of `problem.mode` from the forward cost: bwd = bwd_factor x fwd."""
    if problem.mode == "fwd":
        return fwd
    if problem.mode == "bwd":
        return bwd_factor * fwd
    return (1.0 + bwd_factor) * fwd


def io_bytes_for_mode(problem: Problem) -> float:
    """Minimum traffic: fwd reads q,k,v and writes o; bwd also reads o, dO and writes dq,dk,dv."""
    fwd = qkvo_bytes(problem)
    bwd = 2.0 * fwd  # read q,k,v,o (4) + dO (1) + write dq,dk,dv (3) = 8 tensors = 2x fwd
    return {"fwd": fwd, "bwd": bwd, "fwd_bwd": fwd + bwd}[problem.mode]


def causal_fraction(problem: Problem) -> float:
    """Fraction of the N x N score matrix computed: ~1/2 when causal."""
    n = problem.seq_len
    return (n + 1) / (2.0 * n) if problem.causal else 1.0
