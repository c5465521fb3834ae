"""Triton helpers of the LUNA kernels (attentions/luna/triton_kernels.py): tile loads and stores, the
packed-parameter offsets and, in registers, the feature map phi of a token tile and its backward.

Notation as in triton_kernels.py: a tile is BLOCK_N tokens x BLOCK_H head-dim columns (zero padded);
feature column c = i L + l of phi has u_c = d^(-1/4) x . W_{c // L} + b_{c // L}.
"""

from __future__ import annotations

import triton
import triton.language as tl


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

# fmt: on
