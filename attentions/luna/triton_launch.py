"""Launch wrappers of the fused LUNA kernels (attentions/luna/triton_kernels.py): sizes, grids, the
packed parameters, and the reduction of the per-program parameter-gradient slices.

`luna_forward` / `luna_backward` are what `triton_autograd.LunaTritonFunction` calls; they run on
CUDA tensors, or on CPU tensors when Triton interprets (TRITON_INTERPRET=1 set before the first
import of triton and of the kernel modules). With `block_n=None` (the default) each kernel goes
through `triton.autotune` over the candidates of triton_configs.py for its (head_dim, D, dtype):
timed on the first call of each (a warm-up call in the harness); only the first candidate under
the interpreter (nothing to time) or with ATTNBENCH_LUNA_AUTOTUNE=0 (tests: one compile per kernel
instead of one per candidate). An explicit `block_n` launches the plain kernels with it.
"""

from __future__ import annotations

import math
import os

import torch
import triton
import triton.language as tl
from torch import Tensor

from attentions.luna import triton_configs as tc
from attentions.luna.triton_kernels import (
    _bwd_key_kernel,
    _bwd_query_kernel,
    _causal_bwd_key_kernel,
    _causal_bwd_query_kernel,
    _causal_kernel,
    _query_kernel,
    _state_kernel,
)

MAX_FEATURES = 128  # D = m * L; register tiles are (BLOCK_N, D) and (D, head_dim)
MAX_HEAD_DIM = 128
BIG_WARPS = 8  # explicit block_n: num_warps of the kernels holding many tiles (causal, backward)
AUTOTUNE_ENV = "ATTNBENCH_LUNA_AUTOTUNE"  # "0": the first candidate only, nothing timed


# ----- launch wrappers ---------------------------------------------------------------------------
def is_interpreted() -> bool:
    """True when triton.language and this module were both imported under TRITON_INTERPRET=1 (Triton
    decides at decoration time); only then can the kernels take CPU tensors."""
    return all(type(f).__name__ == "InterpretedFunction" for f in (tl.zeros, _state_kernel))


def _config(q: Tensor, v: Tensor, weights: tuple[Tensor, ...], nonneg: bool, block_n: int | None) -> dict:
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
    if block_n is not None and (block_n < 16 or block_n & (block_n - 1)):
        raise ValueError(f"block_n must be a power of two >= 16, got {block_n}")
    sizes = dict(BLOCK_N=block_n) if block_n is not None else {}
    return dict(
        **sizes,
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
        BLOCK_D=max(16, triton.next_power_of_2(m * L)),
        BLOCK_H=max(16, triton.next_power_of_2(d)),
    )


def _split(N: int, unit: int, bh: int, device: torch.device, splits: int | None) -> tuple[int, int]:
    """(programs per head, tokens per program: a multiple of `unit`) for the non-causal passes over N.
    unit: the explicit block_n, or tc.SPLIT_TOKENS (a multiple of every tuned BLOCK_N)."""
    if splits is None:
        sms = torch.cuda.get_device_properties(device).multi_processor_count if device.type == "cuda" else 1
        splits = max(1, 4 * sms // bh)
    units = triton.cdiv(N, unit)
    per = triton.cdiv(units, max(1, min(splits, units)))
    return triton.cdiv(units, per), per * unit


def _prune(name: str):
    """early_config_prune of kernel `name`: its candidates for (d, D, dtype of the first tensor)."""

    def prune(configs: list, named_args: dict, **kwargs) -> list:
        args = {**named_args, **kwargs}
        first = next(a for a in args.values() if isinstance(a, Tensor))
        wanted = tc.candidates(name, args["d"], args["D"], tc.dtype_name(first.dtype))
        by_key = {(c.kwargs["BLOCK_N"], c.num_warps, c.num_stages): c for c in configs}
        first_only = is_interpreted() or os.environ.get(AUTOTUNE_ENV, "1") == "0"
        return [by_key[w] for w in wanted[: 1 if first_only else None]]

    return prune


def _autotuned(fn, name: str, atomics: bool):
    """`fn` under triton.autotune over every (BLOCK_N, num_warps, num_stages), pruned per key to the
    candidates; the partial buffers that kernels add into atomically are zeroed before each timing."""
    configs = [
        triton.Config({"BLOCK_N": bn}, num_warps=w, num_stages=s)
        for bn in tc.BLOCKS
        for w in tc.WARPS
        for s in tc.STAGES
    ]
    return triton.autotune(
        configs, key=["d", "D"], prune_configs_by={"early_config_prune": _prune(name)},
        reset_to_zero=["part_ptr"] if atomics else None,
    )(fn)  # fmt: skip


TUNED = {
    name: _autotuned(fn, name, atomics="bwd" in name)
    for name, fn in zip(
        tc.KERNELS,
        (_state_kernel, _query_kernel, _causal_kernel, _bwd_query_kernel, _bwd_key_kernel,
         _causal_bwd_query_kernel, _causal_bwd_key_kernel),
        strict=True,
    )
}  # fmt: skip


def _kernel(name: str, cfg: dict, warps: int = 4):
    """(launcher, extra launch options): the autotuned kernel when cfg has no BLOCK_N, else the plain
    module-level one (looked up at call time) with `warps`."""
    if "BLOCK_N" not in cfg:
        return TUNED[name], {}
    return globals()[name], {"num_warps": warps}


def _pack(weights: tuple[Tensor, ...]) -> Tensor:
    """W, b, w1, b1, w2, b2 flattened into one fp32 vector, in that order (see `_offsets`)."""
    return torch.cat([w.detach().float().reshape(-1) for w in weights])


def luna_forward(
    q: Tensor, k: Tensor, v: Tensor, weights: tuple[Tensor, ...], causal: bool, nonneg: bool, eps: float,
    block_n: int | None = None, splits: int | None = None,
) -> tuple[Tensor, Tensor | None, Tensor | None]:  # fmt: skip
    """LUNA attention. q, k, v: contiguous (B, H, N, d); weights: W, b, w1, b1, w2, b2 (naive.py shapes).

    Returns out (B, H, N, d) in q's dtype and, non-causal, the key statistics S (B*H, D, d) and
    z (B*H, D) in fp32, kept for the backward (None when causal). block_n None: autotuned.
    """
    cfg = _config(q, v, weights, nonneg, block_n)
    B, H, N, d = q.shape
    bh, D, p = B * H, cfg["D"], _pack(weights)
    out = torch.empty_like(q)
    if causal:
        kernel, opts = _kernel("_causal_kernel", cfg, BIG_WARPS)
        kernel[(bh,)](q, k, v, out, p, eps=eps, **opts, **cfg)
        return out, None, None
    splits, split_len = _split(N, block_n or tc.SPLIT_TOKENS, bh, q.device, splits)
    s_part = q.new_empty(bh, splits, D, d, dtype=torch.float32)
    z_part = q.new_empty(bh, splits, D, dtype=torch.float32)
    kernel, opts = _kernel("_state_kernel", cfg)
    kernel[(bh, splits)](k, v, s_part, z_part, p, split_len=split_len, **opts, **cfg)
    S, z = s_part.sum(1), z_part.sum(1)
    kernel, opts = _kernel("_query_kernel", cfg)
    kernel[lambda meta: (bh, triton.cdiv(N, meta["BLOCK_N"]))](q, S, z, out, p, eps=eps, **opts, **cfg)
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
    weights: tuple[Tensor, ...], causal: bool, nonneg: bool, eps: float, block_n: int | None = None,
    splits: int | None = None,
) -> list[Tensor]:  # fmt: skip
    """Gradients [dq, dk, dv, dW, db, dw1, db1, dw2, db2] from dout (B, H, N, d) and the forward's S, z.
    dq, dk, dv in the inputs' dtypes, parameter gradients fp32. block_n None: autotuned."""
    cfg = _config(q, v, weights, nonneg, block_n)
    B, H, N, d = q.shape
    bh, D, hidden, p = B * H, cfg["D"], cfg["hidden"], _pack(weights)
    stride = D * d + 2 * D + 3 * hidden * D
    dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
    if causal:
        part_q = q.new_zeros(bh, stride, dtype=torch.float32)
        part_k = torch.zeros_like(part_q)
        den, dden = (q.new_empty(bh, N, dtype=torch.float32) for _ in range(2))
        kernel, opts = _kernel("_causal_bwd_query_kernel", cfg, BIG_WARPS)
        kernel[(bh,)](q, k, v, dout, dq, den, dden, part_q, p, eps=eps, part_stride=stride, **opts, **cfg)
        kernel, opts = _kernel("_causal_bwd_key_kernel", cfg, BIG_WARPS)
        kernel[(bh,)](q, k, v, dout, den, dden, dk, dv, part_k, p, part_stride=stride, **opts, **cfg)
    else:
        splits, split_len = _split(N, block_n or tc.SPLIT_TOKENS, bh, q.device, splits)
        part_q = q.new_zeros(bh * splits, stride, dtype=torch.float32)
        part_k = torch.zeros_like(part_q)
        ds_part = q.new_empty(bh, splits, D, d, dtype=torch.float32)
        dz_part = q.new_empty(bh, splits, D, dtype=torch.float32)
        kernel, opts = _kernel("_bwd_query_kernel", cfg, BIG_WARPS)
        kernel[(bh, splits)](
            q, dout, S, z, dq, ds_part, dz_part, part_q, p, eps=eps, split_len=split_len,
            part_stride=stride, **opts, **cfg,
        )  # fmt: skip
        kernel, opts = _kernel("_bwd_key_kernel", cfg, BIG_WARPS)
        kernel[(bh, splits)](
            k, v, ds_part.sum(1), dz_part.sum(1), dk, dv, part_k, p, split_len=split_len,
            part_stride=stride, **opts, **cfg,
        )  # fmt: skip
    m, L, G = weights[0].shape[0], cfg["L"], weights[2].shape[0]
    param_grads = reduce_param_grads(torch.cat([part_q, part_k]), m, L, d, hidden, G)
    return [dq, dk, dv, *param_grads]
