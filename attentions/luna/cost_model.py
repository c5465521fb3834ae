"""LUNA's cost model per impl: what each one executes, forward and backward (see `luna_flop_terms`).

Per (batch, head), N tokens, D = m L features, d = head dim; each of the 2N q and k tokens pays the
feature map: the projection x' W^T (2 d m), in the shared layout the MLP's second layer as a
matmul (2 m hidden L), the rest of the MLP elementwise, and with the learned envelope a
matrix-vector product (2 d: aten.mv, which FlopCounterMode does not count).
"""

from __future__ import annotations

from typing import Any

from attentions.luna.triton_configs import causal_block_n
from attentions.window_linear.cost import hybrid_flops
from harness.measure.costs import by_mode, causal_chunked_matmul_flops, chunk_sizes, matmul_flops
from harness.plugins.contract import Problem


def _features(problem: Problem, p: Any, columns: int) -> tuple[float, float, float]:
    """(matmul, elementwise, envelope) forward FLOPs of phi for the q and k tokens of one (batch, head).
    columns: rows of the projection (m; the Triton kernels project to all D = m L columns)."""
    d, m, L, hid = problem.head_dim, p.m, p.L, p.hidden
    tokens = 2.0 * problem.seq_len
    if columns == m and p.shared_channels:  # 1 -> hidden (2 hid per scalar), hidden -> L as a matmul
        matmul, elementwise = tokens * (2 * d * m + 2 * m * hid * L), tokens * m * 2 * hid
    elif columns == m:  # per channel l: 1 -> hidden (2 hid) and hidden . w2_l (2 hid), broadcasts
        matmul, elementwise = tokens * 2 * d * m, tokens * m * L * 4 * hid
    else:  # Triton: one loop over hidden units per feature column, in registers
        matmul, elementwise = tokens * 2 * d * columns, tokens * columns * 5 * hid
    return matmul, elementwise, tokens * 2 * d if p.envelope == "learned" else 0.0


def _triton_attention(problem: Problem, D: int) -> tuple[float, float]:
    """(forward, backward) attention and feature-backward matmuls of the fused kernels (not seen by
    FlopCounterMode): backward kernels recompute phi and run the feature backward as two dots."""
    n, d = problem.seq_len, problem.head_dim
    if not problem.causal:
        fwd = 2 * matmul_flops(n, D, d)  # S = phi(K)^T V; phi(Q) S (z by reductions)
        return fwd, 5 * matmul_flops(n, D, d) + 4 * matmul_flops(n, d, D)
    fwd = bwd = 0.0
    for c in chunk_sizes(n, causal_block_n("fwd", d, D, problem.dtype)):  # the blocks the kernels use
        fwd += matmul_flops(c, D, c) + matmul_flops(c, c, d) + 2 * matmul_flops(c, D, d)
    for c in chunk_sizes(n, causal_block_n("bwd", d, D, problem.dtype)):
        local = matmul_flops(c, D, c) + matmul_flops(c, c, d)
        bwd += 2 * (2 * local + 3 * matmul_flops(c, D, d) + 2 * matmul_flops(c, d, D))
    return fwd, bwd


def luna_flop_terms(problem: Problem, p: Any, impl: str) -> dict[str, float]:
    """FLOPs of `impl` in `problem.mode`, whole problem, by part ("*_matmul": what FlopCounterMode
    counts on the torch impls).

    naive: phi of the whole sequence; non-causal phi(k)^T v, phi(q) S (2 N D d each), phi(q) z
    (2 N D); causal the explicit (N, N) weights phi(q) phi(k)^T and their product with v (2 N^2
    (D + d)). Every operand needs a gradient: backward 2x.
    chunked: the same forward by blocks of c = chunk tokens (causal: intra-block c x c products and
    state reads, `costs.causal_chunked_matmul_flops`). Each block is checkpointed, so its backward
    first recomputes the block up to its last saved tensor (phi, and the products feeding the
    outputs; not the state updates): fwd_bwd / fwd is 3.6-3.8 at N = 1000, not 3.
    compile: naive's forward non-causal; causal every block at once (compiled.py): ceil(N / c) full
    blocks (the last one zero padded), each with its state update and state reads. Backward 2x.
    triton: fused kernels; projection to all D columns, MLP in registers, backward recomputes phi.
    """
    bh, n, d, D = problem.batch * problem.heads, problem.seq_len, problem.head_dim, p.m * p.L
    if p.window > 0 and impl in ("naive", "chunked"):
        return _window_terms(problem, p, impl, bh, n, d, D)
    if impl == "triton":
        feat, mlp, env = _features(problem, p, D)
        fwd, bwd = _triton_attention(problem, D)
        recompute = 2 if problem.causal else 1  # causal: both backward kernels recompute phi(q), phi(k)
        feat_bwd, mlp_bwd = recompute * feat, (recompute + 2) * mlp  # then phi's backward in registers
    else:
        feat, mlp, env = _features(problem, p, p.m)
        checkpointed = impl == "chunked"
        if problem.causal and impl == "compile":  # every block at once, the last one padded to c
            c = p.chunk
            per_block = matmul_flops(c, D, c) + matmul_flops(c, c, d) + 2 * matmul_flops(c, D, d)
            fwd = -(-n // c) * (per_block + matmul_flops(c, D, 1))
            bwd = 2 * fwd  # batched over blocks: both operands of every product get a gradient
        elif problem.causal and impl == "naive":
            fwd = matmul_flops(n, D, n) + matmul_flops(n, n, d)
            bwd = 2 * fwd
        elif problem.causal:
            fwd, bwd = causal_chunked_matmul_flops(chunk_sizes(n, p.chunk), D, d, checkpointed=True)
        else:
            fwd = 2 * matmul_flops(n, D, d) + matmul_flops(n, D, 1)
            bwd = 2 * fwd + (matmul_flops(n, D, d) + matmul_flops(n, D, 1) if checkpointed else 0.0)
        feat_bwd, mlp_bwd = (3 * feat, 3 * mlp) if checkpointed else (2 * feat, 2 * mlp)
    return {
        "feature_matmul": bh * by_mode(problem, feat, feat_bwd),
        "mlp_elementwise": bh * by_mode(problem, mlp, mlp_bwd),
        "envelope_matvec": bh * by_mode(problem, env, 2 * env),
        "attention_matmul": bh * by_mode(problem, fwd, bwd),
    }


def _window_terms(problem: Problem, p: Any, impl: str, bh: int, n: int, d: int, D: int) -> dict[str, float]:
    """The window hybrid. naive: explicit (N, N) exact scores q k^T, feature scores and weights @ v, backward
    2x. chunked: phi by checkpointed blocks (backward recomputes them: 3x), then the blocked passes of
    window_linear.cost (one causal, two non-causal)."""
    feat, mlp, env = _features(problem, p, p.m)
    if impl == "naive":
        fwd = matmul_flops(n, d, n) + matmul_flops(n, D, n) + matmul_flops(n, n, d)
        bwd, feat_bwd, mlp_bwd = 2 * fwd, 2 * feat, 2 * mlp
    else:
        fwd, bwd = hybrid_flops(n, D, d, p.window, p.chunk, problem.causal)
        feat_bwd, mlp_bwd = 3 * feat, 3 * mlp
    return {
        "feature_matmul": bh * by_mode(problem, feat, feat_bwd),
        "mlp_elementwise": bh * by_mode(problem, mlp, mlp_bwd),
        "envelope_matvec": bh * by_mode(problem, env, 2 * env),
        "attention_matmul": bh * by_mode(problem, fwd, bwd),
    }
