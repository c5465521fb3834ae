"""Fused Triton kernels for LUNA (learnable-kernel linear attention); math as in `naive.py`.

Every kernel evaluates the feature map phi on a tile of BLOCK_N tokens in registers and consumes it
at once; phi, the MLP activations and dphi never reach global memory. Notation per (batch, head),
with D = m L features and column c = i L + l of phi:

    u_c   = d^(-1/4) x . W_{i(c)} + b_{i(c)}          (BLOCK_N, BLOCK_D): the projection, done as
                                                      one tl.dot with W_exp (row c = W_{c // L})
    o_c   = b2_l + sum_j w2_lj ReLU(w1_gj u_c + b1_gj) g = 0 (shared MLP) or l (one MLP per channel)
    phi_c = ReLU(o_c) / sqrt(m)                      (ReLU iff nonneg; padded rows/columns are 0)

The parameters travel as one packed fp32 vector [W (m, d) | b (m) | w1, b1 (G, hidden) | w2 (L, hidden)
| b2 (L)]. Both channel layouts share one loop over the `hidden` units with weights gathered per
column (row g = l mod G of w1, b1); the shared layout (G = 1) so evaluates each first-layer unit
L times: elementwise work in registers, traded for one code path without 3-D tiles.

Files: triton_tiles.py (the helpers: tiles, phi and its backward in registers), this module (the
seven kernels), triton_launch.py (sizes, grids, launches, gradient reductions; MAX_FEATURES,
MAX_HEAD_DIM), triton_autograd.py (the autograd.Function).

Forward: non-causal in two kernels, (1) S = phi(K)^T V (D, d) and z = phi(K)^T 1 over key blocks
(`splits` programs per head write fp32 partials, summed by torch), (2) out = phi(Q) S / (phi(Q) z
+ eps) per query block. Causal: one program per head walks the blocks, masked intra-block product
plus carried (S, z). Only S, z (non-causal) are kept for the backward.
Backward (num = phi_q S, den recomputed in fp32; dn = dO / den, dden = -(dO . num) / den^2 per row;
never from the rounded output, whose bf16 error the near-cancelling terms of dphi_q would amplify):
    non-causal: kernel q: dphi_q = dn S^T + dden z^T, and partial dS = phi_q^T dn, dz = phi_q^T dden;
                kernel kv: dphi_k = V dS^T + dz, dV = phi_k dS.
    causal:     kernel q walks blocks forward with the prefix (S, z); kernel kv walks them backward
                with the suffix (dS, dz), plus the masked intra-block terms; kernel q hands it
                den and dden, (B*H, N) fp32 each.
Then, still in registers, the feature backward turns dphi into dq / dk and adds the parameter
gradients of its tile into a per-program fp32 slice of a partial buffer (atomic adds into a slice
no other program touches, so programs never contend); torch sums the slices (`reduce_param_grads`).

Status: checked against naive.py under the CPU interpreter (tests/test_luna_triton.py), compiled
ahead of time for sm_90 and sm_80 (tests/test_luna_triton_compile.py), and on a GPU by tests/gpu/.
BLOCK_N, num_warps and num_stages come from triton_configs.py (autotuned per head_dim, D and dtype).
Causal kernels run B*H programs.
"""

from __future__ import annotations

import triton
import triton.language as tl

from attentions.luna.triton_tiles import (
    _features,
    _features_bwd,
    _out_grads,
    _store,
    _tile,
    _wexp,
)


# fmt: off
# ----- forward kernels: x_ptr arguments point at (B*H, N, d) tensors, s/z at (B*H[*splits], D(, d)) -----
@triton.jit
def _state_kernel(k_ptr, v_ptr, s_ptr, z_ptr, prm_ptr, N, d, D, L, G, hidden, scale, inv_sqrt_m,
                  split_len, NONNEG: tl.constexpr, PREC: tl.constexpr, BLOCK_N: tl.constexpr,
                  BLOCK_D: tl.constexpr, BLOCK_H: tl.constexpr):
    """Non-causal key pass. Program (bh, split) writes partial S (D, d) and z (D,) of its split_len keys."""
    bh, split, n_splits = tl.program_id(0).to(tl.int64), tl.program_id(1), tl.num_programs(1)
    offs_n, offs_c, offs_h = tl.arange(0, BLOCK_N), tl.arange(0, BLOCK_D), tl.arange(0, BLOCK_H)
    wexp = _wexp(prm_ptr, offs_c, offs_h, d, D, L)
    S = tl.zeros((BLOCK_D, BLOCK_H), dtype=tl.float32)
    z = tl.zeros((BLOCK_D,), dtype=tl.float32)
    for t in range(split_len // BLOCK_N):  # split_len: a multiple of BLOCK_N
        rows = split * split_len + t * BLOCK_N + offs_n
        row_mask = rows < N
        x = _tile(k_ptr + bh * N * d, rows, row_mask, offs_h, d)
        _, _, phi = _features(x, wexp, prm_ptr, row_mask, offs_c, d, D, L, G, hidden, scale, inv_sqrt_m,
                              NONNEG, PREC)
        S += tl.dot(tl.trans(phi), _tile(v_ptr + bh * N * d, rows, row_mask, offs_h, d), input_precision=PREC)
        z += tl.sum(phi, 0)
    prog = bh * n_splits + split
    _store(s_ptr + prog * D * d, S, offs_c, offs_c < D, offs_h, d)
    tl.store(z_ptr + prog * D + offs_c, z, mask=offs_c < D)


@triton.jit
def _query_kernel(q_ptr, s_ptr, z_ptr, out_ptr, prm_ptr, N, d, D, L, G, hidden, scale, inv_sqrt_m,
                  eps, NONNEG: tl.constexpr, PREC: tl.constexpr, BLOCK_N: tl.constexpr,
                  BLOCK_D: tl.constexpr, BLOCK_H: tl.constexpr):
    """Non-causal query pass, program (bh, block): out = phi(q) S / (phi(q) . z + eps)."""
    bh, blk = tl.program_id(0).to(tl.int64), tl.program_id(1)
    offs_n, offs_c, offs_h = tl.arange(0, BLOCK_N), tl.arange(0, BLOCK_D), tl.arange(0, BLOCK_H)
    rows = blk * BLOCK_N + offs_n
    row_mask = rows < N
    S = _tile(s_ptr + bh * D * d, offs_c, offs_c < D, offs_h, d)
    z = tl.load(z_ptr + bh * D + offs_c, mask=offs_c < D, other=0.0)
    x = _tile(q_ptr + bh * N * d, rows, row_mask, offs_h, d)
    wexp = _wexp(prm_ptr, offs_c, offs_h, d, D, L)
    _, _, phi = _features(x, wexp, prm_ptr, row_mask, offs_c, d, D, L, G, hidden, scale, inv_sqrt_m,
                          NONNEG, PREC)
    den = tl.sum(phi * z[None, :], 1) + eps
    out = tl.dot(phi, S, input_precision=PREC) / den[:, None]
    _store(out_ptr + bh * N * d, out, rows, row_mask, offs_h, d)


@triton.jit
def _causal_kernel(q_ptr, k_ptr, v_ptr, out_ptr, prm_ptr, N, d, D, L, G, hidden, scale, inv_sqrt_m,
                   eps, NONNEG: tl.constexpr, PREC: tl.constexpr, BLOCK_N: tl.constexpr,
                   BLOCK_D: tl.constexpr, BLOCK_H: tl.constexpr):
    """Causal forward, one program per (batch, head) walking blocks with the carried state (S, z)."""
    bh = tl.program_id(0).to(tl.int64)  # offsets bh * N * d may pass 2^31
    base = bh * N * d
    q_ptr, k_ptr, v_ptr, out_ptr = q_ptr + base, k_ptr + base, v_ptr + base, out_ptr + base
    offs_n, offs_c, offs_h = tl.arange(0, BLOCK_N), tl.arange(0, BLOCK_D), tl.arange(0, BLOCK_H)
    wexp = _wexp(prm_ptr, offs_c, offs_h, d, D, L)
    tril = offs_n[:, None] >= offs_n[None, :]
    S = tl.zeros((BLOCK_D, BLOCK_H), dtype=tl.float32)
    z = tl.zeros((BLOCK_D,), dtype=tl.float32)
    for start in range(0, N, BLOCK_N):
        rows = start + offs_n
        row_mask = rows < N
        vt = _tile(v_ptr, rows, row_mask, offs_h, d)
        _, _, pq = _features(_tile(q_ptr, rows, row_mask, offs_h, d), wexp, prm_ptr, row_mask, offs_c, d, D,
                             L, G, hidden, scale, inv_sqrt_m, NONNEG, PREC)
        _, _, pk = _features(_tile(k_ptr, rows, row_mask, offs_h, d), wexp, prm_ptr, row_mask, offs_c, d, D,
                             L, G, hidden, scale, inv_sqrt_m, NONNEG, PREC)
        local = tl.where(tril, tl.dot(pq, tl.trans(pk), input_precision=PREC), 0.0)  # (BLOCK_N, BLOCK_N)
        num = tl.dot(local, vt, input_precision=PREC) + tl.dot(pq, S, input_precision=PREC)
        den = tl.sum(local, 1) + tl.sum(pq * z[None, :], 1) + eps
        _store(out_ptr, num / den[:, None], rows, row_mask, offs_h, d)
        S += tl.dot(tl.trans(pk), vt, input_precision=PREC)
        z += tl.sum(pk, 0)


# ----- backward kernels: part_ptr is a (programs, stride) fp32 buffer of parameter-gradient slices -----
@triton.jit
def _bwd_query_kernel(q_ptr, dout_ptr, s_ptr, z_ptr, dq_ptr, ds_ptr, dz_ptr, part_ptr, prm_ptr, N, d, D, L,
                      G, hidden, scale, inv_sqrt_m, eps, split_len, part_stride,
                      NONNEG: tl.constexpr, PREC: tl.constexpr, BLOCK_N: tl.constexpr,
                      BLOCK_D: tl.constexpr, BLOCK_H: tl.constexpr):
    """Non-causal backward, query side, program (bh, split): dq, and partial dS = phi_q^T dn, dz."""
    bh, split, n_splits = tl.program_id(0).to(tl.int64), tl.program_id(1), tl.num_programs(1)
    prog = bh * n_splits + split
    offs_n, offs_c, offs_h = tl.arange(0, BLOCK_N), tl.arange(0, BLOCK_D), tl.arange(0, BLOCK_H)
    c_mask = offs_c < D
    wexp = _wexp(prm_ptr, offs_c, offs_h, d, D, L)
    S = _tile(s_ptr + bh * D * d, offs_c, c_mask, offs_h, d)
    z = tl.load(z_ptr + bh * D + offs_c, mask=c_mask, other=0.0)
    dS = tl.zeros((BLOCK_D, BLOCK_H), dtype=tl.float32)
    dz = tl.zeros((BLOCK_D,), dtype=tl.float32)
    for t in range(split_len // BLOCK_N):  # split_len: a multiple of BLOCK_N
        rows = split * split_len + t * BLOCK_N + offs_n
        row_mask = rows < N
        x = _tile(q_ptr + bh * N * d, rows, row_mask, offs_h, d)
        u, o, phi = _features(x, wexp, prm_ptr, row_mask, offs_c, d, D, L, G, hidden, scale, inv_sqrt_m,
                              NONNEG, PREC)
        den = tl.sum(phi * z[None, :], 1) + eps
        num = tl.dot(phi, S, input_precision=PREC)
        dn, dden = _out_grads(_tile(dout_ptr + bh * N * d, rows, row_mask, offs_h, d), num, den)
        dphi = tl.dot(dn, tl.trans(S), input_precision=PREC) + dden[:, None] * z[None, :]
        dS += tl.dot(tl.trans(phi), dn, input_precision=PREC)
        dz += tl.sum(phi * dden[:, None], 0)
        dx = _features_bwd(dphi, x, u, o, wexp, prm_ptr, part_ptr + prog * part_stride, row_mask, offs_c,
                           offs_h, d, D, L, G, hidden, scale, inv_sqrt_m, NONNEG, PREC)
        _store(dq_ptr + bh * N * d, dx, rows, row_mask, offs_h, d)
    _store(ds_ptr + prog * D * d, dS, offs_c, c_mask, offs_h, d)
    tl.store(dz_ptr + prog * D + offs_c, dz, mask=c_mask)


@triton.jit
def _bwd_key_kernel(k_ptr, v_ptr, ds_ptr, dz_ptr, dk_ptr, dv_ptr, part_ptr, prm_ptr, N, d, D, L, G, hidden,
                    scale, inv_sqrt_m, split_len, part_stride, NONNEG: tl.constexpr,
                    PREC: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
                    BLOCK_H: tl.constexpr):
    """Non-causal backward, key side, program (bh, split): dphi_k = V dS^T + dz, dV = phi_k dS, dk."""
    bh, split, n_splits = tl.program_id(0).to(tl.int64), tl.program_id(1), tl.num_programs(1)
    prog = bh * n_splits + split
    offs_n, offs_c, offs_h = tl.arange(0, BLOCK_N), tl.arange(0, BLOCK_D), tl.arange(0, BLOCK_H)
    wexp = _wexp(prm_ptr, offs_c, offs_h, d, D, L)
    dS = _tile(ds_ptr + bh * D * d, offs_c, offs_c < D, offs_h, d)
    dz = tl.load(dz_ptr + bh * D + offs_c, mask=offs_c < D, other=0.0)
    for t in range(split_len // BLOCK_N):  # split_len: a multiple of BLOCK_N
        rows = split * split_len + t * BLOCK_N + offs_n
        row_mask = rows < N
        x = _tile(k_ptr + bh * N * d, rows, row_mask, offs_h, d)
        vt = _tile(v_ptr + bh * N * d, rows, row_mask, offs_h, d)
        u, o, phi = _features(x, wexp, prm_ptr, row_mask, offs_c, d, D, L, G, hidden, scale, inv_sqrt_m,
                              NONNEG, PREC)
        dphi = tl.dot(vt, tl.trans(dS), input_precision=PREC) + dz[None, :]
        _store(dv_ptr + bh * N * d, tl.dot(phi, dS, input_precision=PREC), rows, row_mask, offs_h, d)
        dx = _features_bwd(dphi, x, u, o, wexp, prm_ptr, part_ptr + prog * part_stride, row_mask, offs_c,
                           offs_h, d, D, L, G, hidden, scale, inv_sqrt_m, NONNEG, PREC)
        _store(dk_ptr + bh * N * d, dx, rows, row_mask, offs_h, d)


@triton.jit
def _causal_bwd_query_kernel(q_ptr, k_ptr, v_ptr, dout_ptr, dq_ptr, den_ptr, dden_ptr, part_ptr, prm_ptr, N,
                             d, D, L, G, hidden, scale, inv_sqrt_m, eps, part_stride, NONNEG: tl.constexpr,
                             PREC: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
                             BLOCK_H: tl.constexpr):
    """Causal backward, query side: blocks in order with the prefix state (S, z) of earlier blocks.
    Writes den and dden (B*H, N) for the key side."""
    bh = tl.program_id(0).to(tl.int64)  # offsets bh * N * d may pass 2^31
    base = bh * N * d
    q_ptr, k_ptr, v_ptr, dq_ptr = q_ptr + base, k_ptr + base, v_ptr + base, dq_ptr + base
    offs_n, offs_c, offs_h = tl.arange(0, BLOCK_N), tl.arange(0, BLOCK_D), tl.arange(0, BLOCK_H)
    wexp = _wexp(prm_ptr, offs_c, offs_h, d, D, L)
    tril = offs_n[:, None] >= offs_n[None, :]
    S = tl.zeros((BLOCK_D, BLOCK_H), dtype=tl.float32)
    z = tl.zeros((BLOCK_D,), dtype=tl.float32)
    for start in range(0, N, BLOCK_N):
        rows = start + offs_n
        row_mask = rows < N
        x = _tile(q_ptr, rows, row_mask, offs_h, d)
        vt = _tile(v_ptr, rows, row_mask, offs_h, d)
        u, o, pq = _features(x, wexp, prm_ptr, row_mask, offs_c, d, D, L, G, hidden, scale, inv_sqrt_m,
                             NONNEG, PREC)
        _, _, pk = _features(_tile(k_ptr, rows, row_mask, offs_h, d), wexp, prm_ptr, row_mask, offs_c, d, D,
                             L, G, hidden, scale, inv_sqrt_m, NONNEG, PREC)
        local = tl.where(tril, tl.dot(pq, tl.trans(pk), input_precision=PREC), 0.0)
        num = tl.dot(local, vt, input_precision=PREC) + tl.dot(pq, S, input_precision=PREC)
        den = tl.sum(local, 1) + tl.sum(pq * z[None, :], 1) + eps
        dn, dden = _out_grads(_tile(dout_ptr + bh * N * d, rows, row_mask, offs_h, d), num, den)
        tl.store(den_ptr + bh * N + rows, den, mask=row_mask)
        tl.store(dden_ptr + bh * N + rows, dden, mask=row_mask)
        g = tl.where(tril, tl.dot(dn, tl.trans(vt), input_precision=PREC) + dden[:, None], 0.0)  # dL/d(a_ij)
        dphi = tl.dot(g, pk, input_precision=PREC) + tl.dot(dn, tl.trans(S), input_precision=PREC)
        dphi += dden[:, None] * z[None, :]
        dx = _features_bwd(dphi, x, u, o, wexp, prm_ptr, part_ptr + bh * part_stride, row_mask, offs_c,
                           offs_h, d, D, L, G, hidden, scale, inv_sqrt_m, NONNEG, PREC)
        _store(dq_ptr, dx, rows, row_mask, offs_h, d)
        S += tl.dot(tl.trans(pk), vt, input_precision=PREC)
        z += tl.sum(pk, 0)


@triton.jit
def _causal_bwd_key_kernel(q_ptr, k_ptr, v_ptr, dout_ptr, den_ptr, dden_ptr, dk_ptr, dv_ptr, part_ptr,
                           prm_ptr, N, d, D, L, G, hidden, scale, inv_sqrt_m, part_stride,
                           NONNEG: tl.constexpr, PREC: tl.constexpr, BLOCK_N: tl.constexpr,
                           BLOCK_D: tl.constexpr, BLOCK_H: tl.constexpr):
    """Causal backward, key side: blocks in reverse with the suffix (dS, dz) of later query blocks."""
    bh = tl.program_id(0).to(tl.int64)  # offsets bh * N * d may pass 2^31
    base = bh * N * d
    q_ptr, k_ptr, v_ptr, dk_ptr = q_ptr + base, k_ptr + base, v_ptr + base, dk_ptr + base
    offs_n, offs_c, offs_h = tl.arange(0, BLOCK_N), tl.arange(0, BLOCK_D), tl.arange(0, BLOCK_H)
    wexp = _wexp(prm_ptr, offs_c, offs_h, d, D, L)
    tril = offs_n[:, None] >= offs_n[None, :]
    dS = tl.zeros((BLOCK_D, BLOCK_H), dtype=tl.float32)
    dz = tl.zeros((BLOCK_D,), dtype=tl.float32)
    n_blocks = tl.cdiv(N, BLOCK_N)
    for t in range(n_blocks):
        rows = (n_blocks - 1 - t) * BLOCK_N + offs_n
        row_mask = rows < N
        x = _tile(k_ptr, rows, row_mask, offs_h, d)
        vt = _tile(v_ptr, rows, row_mask, offs_h, d)
        _, _, pq = _features(_tile(q_ptr, rows, row_mask, offs_h, d), wexp, prm_ptr, row_mask, offs_c, d, D,
                             L, G, hidden, scale, inv_sqrt_m, NONNEG, PREC)
        u, o, pk = _features(x, wexp, prm_ptr, row_mask, offs_c, d, D, L, G, hidden, scale, inv_sqrt_m,
                             NONNEG, PREC)
        den = tl.load(den_ptr + bh * N + rows, mask=row_mask, other=1.0)
        dden = tl.load(dden_ptr + bh * N + rows, mask=row_mask, other=0.0)
        dn = _tile(dout_ptr + bh * N * d, rows, row_mask, offs_h, d) / den[:, None]
        g = tl.where(tril, tl.dot(dn, tl.trans(vt), input_precision=PREC) + dden[:, None], 0.0)  # (i, j)
        local = tl.where(tril, tl.dot(pq, tl.trans(pk), input_precision=PREC), 0.0)
        dphi = tl.dot(tl.trans(g), pq, input_precision=PREC) + tl.dot(vt, tl.trans(dS), input_precision=PREC)
        dphi += dz[None, :]
        dvt = tl.dot(tl.trans(local), dn, input_precision=PREC) + tl.dot(pk, dS, input_precision=PREC)
        _store(dv_ptr + bh * N * d, dvt, rows, row_mask, offs_h, d)
        dx = _features_bwd(dphi, x, u, o, wexp, prm_ptr, part_ptr + bh * part_stride, row_mask, offs_c,
                           offs_h, d, D, L, G, hidden, scale, inv_sqrt_m, NONNEG, PREC)
        _store(dk_ptr, dx, rows, row_mask, offs_h, d)
        dS += tl.dot(tl.trans(pq), dn, input_precision=PREC)
        dz += tl.sum(pq * dden[:, None], 0)
# fmt: on
