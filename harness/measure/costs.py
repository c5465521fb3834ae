"""FLOP and byte helpers shared by the variants' cost models.

Conventions: a multiply-add counts as 2 FLOPs; costs are for the whole problem (batch x heads).
A variant counts what its impl executes (`AttentionVariant.flop_terms`): the backward of a matmul
costs one matmul of the same size per operand that needs a gradient (2x when both do, 1x for a
product with a fixed matrix, 0 for a result nothing downstream uses), plus any recomputation
(checkpointing; FlashAttention recomputes P: bwd = 2.5x fwd). `by_mode` combines the two.
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


def by_mode(problem: Problem, fwd: float, bwd: float) -> float:
    """The cost of `problem.mode` from the forward and the backward costs."""
    return {"fwd": fwd, "bwd": bwd, "fwd_bwd": fwd + bwd}[problem.mode]


def exact_attention_flops(problem: Problem) -> float:
    """FLOPs of exact softmax attention for `problem`, the yardstick of "throughput against exact".

    FlashAttention's convention: per (batch, head) the forward is 4 N^2 d (q k^T and P v, 2 N^2 d
    each), times the causal fraction (N + 1) / 2N of the score matrix when causal; the backward is
    2.5x the forward (5 matmuls of that size: S recomputed, dV, dP, dQ, dK). Softmax and scaling
    are not counted. Whole problem (batch x heads), in `problem.mode`.
    """
    n, d = problem.seq_len, problem.head_dim
    fwd = problem.batch * problem.heads * 4.0 * n * n * d * causal_fraction(problem)
    return by_mode(problem, fwd, 2.5 * fwd)


def io_bytes_for_mode(problem: Problem) -> float:
    """Minimum traffic: fwd reads q,k,v and writes o; bwd also reads o, dO and writes dq,dk,dv."""
    fwd = qkvo_bytes(problem)
    bwd = 2.0 * fwd  # read q,k,v,o (4) + dO (1) + write dq,dk,dv (3) = 8 tensors = 2x fwd
    return {"fwd": fwd, "bwd": bwd, "fwd_bwd": fwd + bwd}[problem.mode]


def causal_fraction(problem: Problem) -> float:
    """Fraction of the N x N score matrix computed: ~1/2 when causal."""
    n = problem.seq_len
    return (n + 1) / (2.0 * n) if problem.causal else 1.0


def chunk_sizes(n: int, chunk: int) -> list[int]:
    """Lengths of the blocks of `chunk` tokens covering n tokens (the last one may be shorter)."""
    return [min(chunk, n - start) for start in range(0, n, chunk)]


def causal_chunked_matmul_flops(
    sizes: list[int], D: int, d: int, checkpointed: bool = False
) -> tuple[float, float]:
    """(forward, backward) matmul FLOPs per (batch, head) of causal linear attention by blocks.

    Block b of c tokens with features (c, D): the masked intra-block product phi_q phi_k^T
    (c x D x c) and its product with v (c x c x d), the state reads phi_q S (c x D x d) and phi_q z
    (c x D x 1), and the state update phi_k^T v (D x c x d). Backward, what autograd executes:
    two products per forward one, except the state reads of block 0 (S, z are zeros: no gradient,
    one product) and the last block's state update (unused: none). `checkpointed`: each block runs
    under torch.utils.checkpoint (non-reentrant), whose backward recomputes the block up to its last
    tensor saved for the backward: the products and the state reads, not the state update.
    """
    fwd = bwd = 0.0
    last = len(sizes) - 1
    for b, c in enumerate(sizes):
        local = matmul_flops(c, D, c) + matmul_flops(c, c, d)
        reads = matmul_flops(c, D, d) + matmul_flops(c, D, 1)
        update = matmul_flops(D, c, d)
        fwd += local + reads + update
        bwd += 2 * local + (1 if b == 0 else 2) * reads + (0 if b == last else 2) * update
        bwd += local + reads if checkpointed else 0.0
    return fwd, bwd
