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

Status: checked against naive.py under the CPU interpreter only (tests/test_luna_triton.py); block
sizes and num_warps are first guesses, not tuned on a GPU. Causal kernels run B*H programs.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl
from torch import Tensor

MAX_FEATURES = 128  # D = m * L; register tiles are (BLOCK_N, D) and (D, head_dim)
MAX_HEAD_DIM = 128
BIG_WARPS = 8  # num_warps of the kernels holding many (BLOCK_N, D) and (D, d) tiles (causal, backward)


# fmt: off
@triton.jit
def _tile(ptr, rows, row_mask, offs_h, d):
    """Rows `rows` of a contiguous (N, d) matrix, zero padded, as fp32 (BLOCK_N, BLOCK_H)."""
    mask = row_mask[:, None] & (offs_h < d)[None, :]
    return tl.load(ptr + rows[:, None] * d + offs_h[None, :], mask=mask, other=0.0).to(tl.float32)


@triton.jit
def _store(ptr, val, rows, row_mask, offs_h, d):
    """Store a (BLOCK_N, BLOCK_H) tile into rows `rows` of a contiguous (N, d) matrix (cast to its dtype)."""
    mask = row_mask[:, None] & (offs_h < d)[None, :]
    tl.store(ptr + rows[:, None] * d + offs_h[None, :], val, mask=mask)


@triton.jit
def _offsets(d, D, L, G, hidden):
    """Offsets of b, w1, b1, w2, b2 in the packed parameter vector (W starts at 0)."""
    o_b = (D // L) * d
    o_w1 = o_b + D // L
    o_b1 = o_w1 + G * hidden
    o_w2 = o_b1 + G * hidden
    return o_b, o_w1, o_b1, o_w2, o_w2 + L * hidden


@triton.jit
def _wexp(prm_ptr, offs_c, offs_h, d, D, L):
    """W expanded to feature columns: row c is W[c // L]. (BLOCK_D, BLOCK_H) fp32."""
    mask = (offs_c < D)[:, None] & (offs_h < d)[None, :]
    return tl.load(prm_ptr + (offs_c // L)[:, None] * d + offs_h[None, :], mask=mask, other=0.0)


@triton.jit
def _mlp_ptrs(prm_ptr, offs_c, d, D, L, G, hidden):
    """Pointers to hidden unit 0's w1, b1 (row l mod G) and w2 (row l) per feature column, 3 x (BLOCK_D,);
    unit j is at pointer + j."""
    _, o_w1, o_b1, o_w2, _ = _offsets(d, D, L, G, hidden)
    l_idx = offs_c % L
    g_row = (l_idx % G) * hidden
    return prm_ptr + o_w1 + g_row, prm_ptr + o_b1 + g_row, prm_ptr + o_w2 + l_idx * hidden


@triton.jit
def _features(x, wexp, prm_ptr, row_mask, offs_c, d, D, L, G, hidden, scale, inv_sqrt_m,
              NONNEG: tl.constexpr, PREC: tl.constexpr):
    """phi of a token tile. x: (BLOCK_N, BLOCK_H) fp32 -> u, o, phi, each (BLOCK_N, BLOCK_D) fp32."""
    o_b, _, _, _, o_b2 = _offsets(d, D, L, G, hidden)
    c_mask = offs_c < D
    bias = tl.load(prm_ptr + o_b + offs_c // L, mask=c_mask, other=0.0)
    u = tl.dot(x, tl.trans(wexp), input_precision=PREC) * scale + bias[None, :]
    o = tl.zeros_like(u) + tl.load(prm_ptr + o_b2 + offs_c % L, mask=c_mask, other=0.0)[None, :]
    w1_p, b1_p, w2_p = _mlp_ptrs(prm_ptr, offs_c, d, D, L, G, hidden)
    for _ in range(hidden):
        w1 = tl.load(w1_p, mask=c_mask, other=0.0)
        b1 = tl.load(b1_p, mask=c_mask, other=0.0)
        w2 = tl.load(w2_p, mask=c_mask, other=0.0)
        o += tl.maximum(u * w1[None, :] + b1[None, :], 0.0) * w2[None, :]
        w1_p, b1_p, w2_p = w1_p + 1, b1_p + 1, w2_p + 1
    phi = o
    if NONNEG:
        phi = tl.maximum(o, 0.0)
    phi = tl.where(row_mask[:, None] & c_mask[None, :], phi * inv_sqrt_m, 0.0)
    return u, o, phi


@triton.jit
def _features_bwd(dphi, x, u, o, wexp, prm_ptr, part_ptr, row_mask, offs_c, offs_h, d, D, L, G, hidden,
                  scale, inv_sqrt_m, NONNEG: tl.constexpr, PREC: tl.constexpr):
    """dx (BLOCK_N, BLOCK_H) fp32 from dphi (BLOCK_N, BLOCK_D); adds the tile's parameter gradients to
    this program's slice part_ptr = [dW_exp (D, d) | db (D) | dw1, db1, dw2 (hidden, D) | db2 (D)]."""
    c_mask = offs_c < D
    go = tl.where(row_mask[:, None] & c_mask[None, :], dphi * inv_sqrt_m, 0.0)  # d loss / d o
    if NONNEG:
        go = tl.where(o > 0.0, go, 0.0)
    hD = hidden * D
    db_p = part_ptr + D * d + offs_c
    dw1_p = db_p + D  # then db1 at + hD, dw2 at + 2 hD, db2 at + 3 hD
    tl.atomic_add(dw1_p + 3 * hD, tl.sum(go, 0), mask=c_mask, sem="relaxed")  # db2
    w1_p, b1_p, w2_p = _mlp_ptrs(prm_ptr, offs_c, d, D, L, G, hidden)
    du = tl.zeros_like(u)
    for _ in range(hidden):
        w1 = tl.load(w1_p, mask=c_mask, other=0.0)
        b1 = tl.load(b1_p, mask=c_mask, other=0.0)
        w2 = tl.load(w2_p, mask=c_mask, other=0.0)
        pre = u * w1[None, :] + b1[None, :]
        dpre = tl.where(pre > 0.0, go * w2[None, :], 0.0)
        tl.atomic_add(dw1_p, tl.sum(dpre * u, 0), mask=c_mask, sem="relaxed")
        tl.atomic_add(dw1_p + hD, tl.sum(dpre, 0), mask=c_mask, sem="relaxed")  # db1
        tl.atomic_add(dw1_p + 2 * hD, tl.sum(go * tl.maximum(pre, 0.0), 0), mask=c_mask, sem="relaxed")  # dw2
        du += dpre * w1[None, :]
        w1_p, b1_p, w2_p, dw1_p = w1_p + 1, b1_p + 1, w2_p + 1, dw1_p + D
    tl.atomic_add(db_p, tl.sum(du, 0), mask=c_mask, sem="relaxed")
    dwexp = tl.dot(tl.trans(du), x, input_precision=PREC) * scale  # (BLOCK_D, BLOCK_H)
    w_mask = c_mask[:, None] & (offs_h < d)[None, :]
    tl.atomic_add(part_ptr + offs_c[:, None] * d + offs_h[None, :], dwexp, mask=w_mask, sem="relaxed")
    return tl.dot(du, wexp, input_precision=PREC) * scale


@triton.jit
def _out_grads(do, num, den):
    """Given dO and out = num / den: dn = dO / den (BLOCK_N, BLOCK_H), dden = -(dO . num) / den^2."""
    dn = do / den[:, None]
    return dn, -tl.sum(dn * num, 1) / den


# ----- forward kernels: x_ptr arguments point at (B*H, N, d) tensors, s/z at (B*H[*splits], D(, d)) -----
@triton.jit
def _state_kernel(k_ptr, v_ptr, s_ptr, z_ptr, prm_ptr, N, d, D, L, G, hidden, scale, inv_sqrt_m,
                  blocks_per_split, NONNEG: tl.constexpr, PREC: tl.constexpr, BLOCK_N: tl.constexpr,
                  BLOCK_D: tl.constexpr, BLOCK_H: tl.constexpr):
    """Non-causal key pass. Program (bh, split) writes partial S (D, d) and z (D,) of its key blocks."""
    bh, split, n_splits = tl.program_id(0).to(tl.int64), tl.program_id(1), tl.num_programs(1)
    offs_n, offs_c, offs_h = tl.arange(0, BLOCK_N), tl.arange(0, BLOCK_D), tl.arange(0, BLOCK_H)
    wexp = _wexp(prm_ptr, offs_c, offs_h, d, D, L)
    S = tl.zeros((BLOCK_D, BLOCK_H), dtype=tl.float32)
    z = tl.zeros((BLOCK_D,), dtype=tl.float32)
    for t in range(blocks_per_split):
        rows = (split * blocks_per_split + t) * BLOCK_N + offs_n
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
                      G, hidden, scale, inv_sqrt_m, eps, blocks_per_split, part_stride,
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
    for t in range(blocks_per_split):
        rows = (split * blocks_per_split + t) * BLOCK_N + offs_n
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
                    scale, inv_sqrt_m, blocks_per_split, part_stride, NONNEG: tl.constexpr,
                    PREC: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
                    BLOCK_H: tl.constexpr):
    """Non-causal backward, key side, program (bh, split): dphi_k = V dS^T + dz, dV = phi_k dS, dk."""
    bh, split, n_splits = tl.program_id(0).to(tl.int64), tl.program_id(1), tl.num_programs(1)
    prog = bh * n_splits + split
    offs_n, offs_c, offs_h = tl.arange(0, BLOCK_N), tl.arange(0, BLOCK_D), tl.arange(0, BLOCK_H)
    wexp = _wexp(prm_ptr, offs_c, offs_h, d, D, L)
    dS = _tile(ds_ptr + bh * D * d, offs_c, offs_c < D, offs_h, d)
    dz = tl.load(dz_ptr + bh * D + offs_c, mask=offs_c < D, other=0.0)
    for t in range(blocks_per_split):
        rows = (split * blocks_per_split + t) * BLOCK_N + offs_n
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


# ----- launch wrappers ---------------------------------------------------------------------------
def is_interpreted() -> bool:
    """True when triton.language and this module were both imported under TRITON_INTERPRET=1 (Triton
    decides at decoration time); only then can the kernels take CPU tensors."""
    return all(type(f).__name__ == "InterpretedFunction" for f in (tl.zeros, _state_kernel))


def _config(q: Tensor, v: Tensor, weights: tuple[Tensor, ...], nonneg: bool, block_n: int) -> dict:
    """Sizes and compile-time switches shared by every kernel launch."""
    if q.device.type != "cuda" and not is_interpreted():
        raise RuntimeError(
            "luna triton kernels need CUDA tensors, or TRITON_INTERPRET=1 set before triton and "
            "attentions.luna.triton_kernels are first imported"
        )
    W, _, w1, _, w2, _ = weights
    (m, d), (L, hidden) = W.shape, w2.shape
    if m * L > MAX_FEATURES or d > MAX_HEAD_DIM:
        raise ValueError(f"luna triton kernels support m*L <= {MAX_FEATURES}, head_dim <= {MAX_HEAD_DIM}")
    if w1.shape[0] not in (1, L) or v.shape[-1] != d or q.shape[-1] != d:
        raise ValueError(
            f"bad shapes: w1 {tuple(w1.shape)} (rows 1 or L={L}), q {tuple(q.shape)}, v {tuple(v.shape)}"
        )
    if block_n < 16 or block_n & (block_n - 1):
        raise ValueError(f"block_n must be a power of two >= 16, got {block_n}")
    return dict(
        N=q.shape[2],
        d=d,
        D=m * L,
        L=L,
        hidden=hidden,
        scale=d**-0.25,
        inv_sqrt_m=1.0 / math.sqrt(m),
        G=w1.shape[0],
        NONNEG=nonneg,
        PREC="ieee" if q.dtype == torch.float32 else "tf32",  # tf32 is finer than bf16/fp16 inputs
        BLOCK_N=block_n,
        BLOCK_D=max(16, triton.next_power_of_2(m * L)),
        BLOCK_H=max(16, triton.next_power_of_2(d)),
    )


def _split(n_blocks: int, bh: int, device: torch.device, splits: int | None) -> tuple[int, int]:
    """(programs per head, blocks per program) for the non-causal passes over N."""
    if splits is None:
        sms = torch.cuda.get_device_properties(device).multi_processor_count if device.type == "cuda" else 1
        splits = max(1, 4 * sms // bh)
    per = triton.cdiv(n_blocks, max(1, min(splits, n_blocks)))
    return triton.cdiv(n_blocks, per), per


def _pack(weights: tuple[Tensor, ...]) -> Tensor:
    """W, b, w1, b1, w2, b2 flattened into one fp32 vector, in that order (see `_offsets`)."""
    return torch.cat([w.detach().float().reshape(-1) for w in weights])


def luna_forward(
    q: Tensor, k: Tensor, v: Tensor, weights: tuple[Tensor, ...], causal: bool, nonneg: bool, eps: float,
    block_n: int = 64, splits: int | None = None,
) -> tuple[Tensor, Tensor | None, Tensor | None]:  # fmt: skip
    """LUNA attention. q, k, v: contiguous (B, H, N, d); weights: W, b, w1, b1, w2, b2 (naive.py shapes).

    Returns out (B, H, N, d) in q's dtype and, non-causal, the key statistics S (B*H, D, d) and
    z (B*H, D) in fp32, kept for the backward (None when causal).
    """
    cfg = _config(q, v, weights, nonneg, block_n)
    B, H, N, d = q.shape
    bh, D, p = B * H, cfg["D"], _pack(weights)
    out = torch.empty_like(q)
    if causal:
        _causal_kernel[(bh,)](q, k, v, out, p, eps=eps, num_warps=BIG_WARPS, **cfg)
        return out, None, None
    n_blocks = triton.cdiv(N, block_n)
    splits, per = _split(n_blocks, bh, q.device, splits)
    s_part = q.new_empty(bh, splits, D, d, dtype=torch.float32)
    z_part = q.new_empty(bh, splits, D, dtype=torch.float32)
    _state_kernel[(bh, splits)](k, v, s_part, z_part, p, blocks_per_split=per, **cfg)
    S, z = s_part.sum(1), z_part.sum(1)
    _query_kernel[(bh, n_blocks)](q, S, z, out, p, eps=eps, **cfg)
    return out, S, z


def reduce_param_grads(part: Tensor, m: int, L: int, d: int, hidden: int, G: int) -> list[Tensor]:
    """Sum the per-program slices (P, stride) into dW (m, d), db (m,), dw1, db1 (G, hidden),
    dw2 (L, hidden), db2 (L,). Slice columns are feature columns c = i L + l (see _features_bwd)."""
    D = m * L
    sizes = [D * d, D, hidden * D, hidden * D, hidden * D, D]
    dwexp, db, dw1, db1, dw2, db2 = torch.split(part.sum(0), sizes)

    def per_channel(t: Tensor) -> Tensor:  # (hidden, D) -> (L, hidden), summed over the m projections
        return t.view(hidden, m, L).sum(1).T.contiguous()

    dw1, db1 = per_channel(dw1), per_channel(db1)
    if G == 1:
        dw1, db1 = dw1.sum(0, keepdim=True), db1.sum(0, keepdim=True)
    return [
        dwexp.view(m, L, d).sum(1),
        db.view(m, L).sum(1),
        dw1,
        db1,
        per_channel(dw2),
        db2.view(m, L).sum(0),
    ]


def luna_backward(
    dout: Tensor, q: Tensor, k: Tensor, v: Tensor, S: Tensor | None, z: Tensor | None,
    weights: tuple[Tensor, ...], causal: bool, nonneg: bool, eps: float, block_n: int = 64,
    splits: int | None = None,
) -> list[Tensor]:  # fmt: skip
    """Gradients [dq, dk, dv, dW, db, dw1, db1, dw2, db2] from dout (B, H, N, d) and the forward's S, z.
    dq, dk, dv in the inputs' dtypes, parameter gradients fp32."""
    cfg = _config(q, v, weights, nonneg, block_n)
    B, H, N, d = q.shape
    bh, D, hidden, p = B * H, cfg["D"], cfg["hidden"], _pack(weights)
    stride = D * d + 2 * D + 3 * hidden * D
    dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
    if causal:
        part_q = q.new_zeros(bh, stride, dtype=torch.float32)
        part_k = torch.zeros_like(part_q)
        den, dden = (q.new_empty(bh, N, dtype=torch.float32) for _ in range(2))
        _causal_bwd_query_kernel[(bh,)](
            q, k, v, dout, dq, den, dden, part_q, p, eps=eps, part_stride=stride, num_warps=BIG_WARPS, **cfg
        )
        _causal_bwd_key_kernel[(bh,)](
            q, k, v, dout, den, dden, dk, dv, part_k, p, part_stride=stride, num_warps=BIG_WARPS, **cfg
        )
    else:
        splits, per = _split(triton.cdiv(N, block_n), bh, q.device, splits)
        part_q = q.new_zeros(bh * splits, stride, dtype=torch.float32)
        part_k = torch.zeros_like(part_q)
        ds_part = q.new_empty(bh, splits, D, d, dtype=torch.float32)
        dz_part = q.new_empty(bh, splits, D, dtype=torch.float32)
        _bwd_query_kernel[(bh, splits)](
            q, dout, S, z, dq, ds_part, dz_part, part_q, p, eps=eps, blocks_per_split=per,
            part_stride=stride, num_warps=BIG_WARPS, **cfg,
        )  # fmt: skip
        _bwd_key_kernel[(bh, splits)](
            k, v, ds_part.sum(1), dz_part.sum(1), dk, dv, part_k, p, blocks_per_split=per,
            part_stride=stride, num_warps=BIG_WARPS, **cfg,
        )  # fmt: skip
    m, L, G = weights[0].shape[0], cfg["L"], weights[2].shape[0]
    param_grads = reduce_param_grads(torch.cat([part_q, part_k]), m, L, d, hidden, G)
    return [dq, dk, dv, *param_grads]
