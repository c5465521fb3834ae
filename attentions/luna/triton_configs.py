"""Launch configurations of the fused LUNA kernels: tokens per tile (BLOCK_N), num_warps, num_stages.

Plain Python (no triton import), so the cost model and the tests read the same table the launches use.
`candidates(kernel, head_dim, D, dtype)` lists what `triton.autotune` times on the first call of each
(head_dim, D, dtype) (its key; triton_launch.py); the first candidate is the one used where nothing
can be timed (Triton's CPU interpreter) and is the least spilling one ptxas reported.

Why these (ptxas -v on sm_90 for d = 64, D = m L = 64, hidden = 64, tests/test_luna_triton_compile.py
run as a script prints the table): at the first guess, BLOCK_N = 64 for everything, the bf16
kernels sat at the 255-register limit and the backward kernels spilled (non-causal query side
228 B, causal query and key sides 650-830 B of stores and loads per thread), since every
backward kernel holds several (BLOCK_N, D) fp32 tiles (u, o, phi, dphi, the MLP's running
du) next to the (D, d) state tiles. Halving BLOCK_N halves the token tiles; more warps spread
every tile over more threads; one stage keeps the loops' loads from holding a second buffer.
Measured for the chosen configs: see the table above `_LARGE`. fp32 inputs use the slower ieee
dots, which need more registers: smaller blocks still (`_SMALL`).

The causal kernels' BLOCK_N is also their intra-block size, which sets their FLOPs (c x c products
per block): it is fixed per (head_dim, D, dtype) by `causal_block_n`, which the cost model reads,
and only warps and stages are timed. The non-causal kernels' FLOPs do not depend on BLOCK_N, so it is
timed too; their programs cover SPLIT_TOKENS-multiples of tokens, whatever BLOCK_N is picked.
"""

from __future__ import annotations

KERNELS = (
    "_state_kernel",
    "_query_kernel",
    "_causal_kernel",
    "_bwd_query_kernel",
    "_bwd_key_kernel",
    "_causal_bwd_query_kernel",
    "_causal_bwd_key_kernel",
)
BLOCKS, WARPS, STAGES = (16, 32, 64, 128), (4, 8), (1, 2)  # every config any key may pick
SPLIT_TOKENS = max(BLOCKS)  # non-causal programs cover a multiple of this many tokens
Config = tuple[int, int, int]  # (BLOCK_N, num_warps, num_stages)


def _small(head_dim: int, D: int, dtype: str) -> bool:
    """Tiles too big for the default blocks: fp32 (ieee dots) or head_dim or D above 64."""
    return dtype == "fp32" or max(head_dim, D) > 64


def causal_block_n(kind: str, head_dim: int, D: int, dtype: str) -> int:
    """Tokens per block of the causal kernels, `kind` "fwd" (forward) or "bwd" (both backward kernels)."""
    if kind not in ("fwd", "bwd"):
        raise ValueError(f"kind must be 'fwd' or 'bwd', got {kind!r}")
    if kind == "bwd":
        return 16
    return 16 if _small(head_dim, D, dtype) else 64


# (BLOCK_N, num_warps, num_stages) per kernel; ptxas on sm_90, bf16, d = D = hidden = 64 (regs, spill
# stores / loads in bytes per thread): state 64/8/2: 226, 0/0 (64/4/2: 255, 20/16); query 64/8/2:
# 128, 0/0 (64/4/2 and 128/8/2: 255, 12/12); causal 64/8/1: 255, 0/0 (64/4/1: 572/652); bwd query
# 32/8/1: 253, 0/0 and 16/4/1: 231, 0/0 (64/8/1: 228/216); bwd key 32/8/1: 170, 0/0; causal bwd
# query 16/4/1: 0/0, key 16/4/1: 32/32 (32/8/1: 20/20 and 76/76; 64/8/1: 708/824 and 656/700).
_LARGE = {  # bf16 / fp16, head_dim and D <= 64: the larger tiles fit
    "_state_kernel": [(64, 8, 2), (32, 4, 2), (128, 8, 2)],
    "_query_kernel": [(64, 8, 2), (32, 4, 2), (128, 8, 2)],
    "_bwd_query_kernel": [(32, 8, 1), (16, 4, 1), (64, 8, 1)],
    "_bwd_key_kernel": [(32, 8, 1), (32, 4, 1), (64, 8, 1)],
}
# fp32 at d = D = 64: state 16/4/2: 210, 0/0 (32/4/2: 720/572); query 32/4/2: 94, 0/0; causal
# 32/8/1: 892/892 (32/4/1: 16592/23716; 64/8/1 at the first guess: 16720/28156); bwd query 16/8/1:
# 147, 0/0 (16/4/1: 80/52); bwd key 16/8/1: 145, 0/0; causal bwd query 16/8/1: 48/48, key 0/0
# (16/4/1: 1484/1560 and 556/584). head_dim or D of 128 in bf16: not measured, the same small tiles.
_SMALL = {  # fp32 (ieee dots) or head_dim / D above 64
    "_state_kernel": [(16, 4, 2), (16, 8, 2), (32, 8, 2)],
    "_query_kernel": [(32, 4, 2), (16, 4, 2)],
    "_bwd_query_kernel": [(16, 8, 1), (16, 4, 1)],
    "_bwd_key_kernel": [(16, 8, 1), (16, 4, 1)],
}


def candidates(kernel: str, head_dim: int, D: int, dtype: str) -> list[Config]:
    """The configs autotune times for `kernel` at (head_dim, D, dtype), the least spilling first."""
    if kernel == "_causal_kernel":
        bn = causal_block_n("fwd", head_dim, D, dtype)
        return [(bn, 8, 1), (bn, 8, 2)]
    if kernel in ("_causal_bwd_query_kernel", "_causal_bwd_key_kernel"):
        bn = causal_block_n("bwd", head_dim, D, dtype)
        return [(bn, 8, 1), (bn, 4, 1)] if _small(head_dim, D, dtype) else [(bn, 4, 1), (bn, 8, 1)]
    table = _SMALL if _small(head_dim, D, dtype) else _LARGE
    if kernel not in table:
        raise ValueError(f"unknown LUNA kernel {kernel!r} (kernels: {', '.join(KERNELS)})")
    return list(table[kernel])


def dtype_name(torch_dtype: object) -> str:
    """ "fp32", "bf16" or "fp16" from a torch dtype (by its name: no torch import needed here)."""
    names = {"torch.float32": "fp32", "torch.bfloat16": "bf16", "torch.float16": "fp16"}
    if str(torch_dtype) not in names:
        raise ValueError(f"luna triton kernels take fp32, bf16 or fp16 inputs, not {torch_dtype}")
    return names[str(torch_dtype)]
