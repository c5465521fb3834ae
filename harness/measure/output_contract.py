"""The output contract every variant call is held to before anything is timed.

A variant's output must be a tensor on the problem's device with exactly the expected shape and
dtype (the shape and dtype of `q`, in the variant's layout), and the call must leave its inputs
as they were. `checked_call` fingerprints q, k and v before the call, checks them after it and
checks the output; a breach raises `ContractError` naming what was wrong, which the pipeline
records as status `error`. Without it a (B, H, N, 1) output, N + 7 rows or one batch of two
would broadcast through the error arithmetic and be recorded `ok`, and a variant that scales `q`
in place would be compared against a reference computed from the already-modified tensor.

The fingerprint is torch's in-place version counter plus an exact content digest computed on
the tensor's own device (no copy to the host): the raw bits of every element, as integers,
weighted by odd position-dependent weights and summed in int64 (wrapping). Any single changed
element changes the digest (an odd weight times a nonzero difference below 2**32 is never
0 mod 2**64); the version counter also catches in-place torch ops that restore the values.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

_INT_VIEW = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}
_CHUNK = 1 << 22  # elements per digest step: bounds the int64 temporaries (32 MiB each)
_MIX = 0x5DEECE66D  # odd multiplier (java.util.Random's), spreads the position weights


class ContractError(Exception):
    """A variant call broke the output contract; `str(err)` is one line naming what was wrong."""


@dataclass(frozen=True)
class Fingerprint:
    """What identifies a tensor's content: metadata, torch's version counter, the content digest."""

    shape: tuple[int, ...]
    stride: tuple[int, ...]
    dtype: torch.dtype
    device: str
    version: int
    digest: int


def digest(x: Tensor) -> int:
    """Exact content digest of `x` (any shape and dtype), computed on `x.device` in chunks."""
    flat = x.detach().contiguous().reshape(-1)
    if flat.is_complex() or flat.dtype == torch.bool:
        flat = flat.view(torch.uint8) if flat.dtype == torch.bool else torch.view_as_real(flat).reshape(-1)
    bits = flat.view(_INT_VIEW[flat.element_size()])
    total = 0
    for start in range(0, bits.numel(), _CHUNK):
        chunk = bits[start : start + _CHUNK].to(torch.int64)
        weights = torch.arange(start, start + chunk.numel(), device=chunk.device, dtype=torch.int64)
        weights = (weights * 2 + 1) * _MIX  # odd, wraps in int64: still odd mod 2**64
        total += int((chunk * weights).sum())
    return total


def fingerprint(x: Tensor) -> Fingerprint:
    """The fingerprint of one tensor (see the module note)."""
    return Fingerprint(tuple(x.shape), tuple(x.stride()), x.dtype, str(x.device), int(x._version), digest(x))


def modified(before: Sequence[Fingerprint], after: Sequence[Tensor], names: Sequence[str]) -> list[str]:
    """Names of the tensors in `after` whose fingerprint differs from `before`."""
    return [n for n, fp, x in zip(names, before, after, strict=True) if fingerprint(x) != fp]


def output_problems(out: object, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> str:
    """'' when `out` is a tensor of exactly `shape` and `dtype` on `device`, else what is wrong.

    Finiteness is judged by the caller (non-finite output has its own status, `nan`)."""
    if not isinstance(out, Tensor):
        return f"returned {type(out).__name__}, expected a tensor"
    wrong = []
    if tuple(out.shape) != tuple(shape):
        wrong.append(f"shape {tuple(out.shape)}, expected {tuple(shape)}")
    if out.dtype != dtype:
        wrong.append(f"dtype {out.dtype}, expected {dtype}")
    if out.device.type != device.type or (
        device.index is not None and out.device.index is not None and out.device.index != device.index
    ):
        wrong.append(f"device {out.device}, expected {device}")
    return "output has " + "; ".join(wrong) if wrong else ""


def checked_call(
    call: Callable[..., object], inputs: Sequence[Tensor], names: Sequence[str] = "qkv"
) -> Tensor:
    """`call(*inputs)` held to the contract: the inputs must come back unmodified and the output
    must have the shape, dtype and device of `inputs[0]` (q: (B, H, N, d) or (B, N, H, d), the
    variant's layout). Raises `ContractError` otherwise."""
    before = [fingerprint(x) for x in inputs]
    out = call(*inputs)
    changed = modified(before, inputs, list(names))
    if changed:
        raise ContractError(f"the variant modified its inputs in place ({', '.join(changed)})")
    q = inputs[0]
    problem = output_problems(out, tuple(q.shape), q.dtype, q.device)
    if problem:
        raise ContractError(problem)
    return out  # type: ignore[return-value]
