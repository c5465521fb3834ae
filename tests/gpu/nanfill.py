"""NaN-filled torch.empty* for code in `attentions.` modules, so reads of memory nobody wrote show up.

`torch.empty`, `empty_like`, `empty_strided` and `Tensor.new_empty`, `new_empty_strided` return
uninitialised memory; a kernel that forgets to write part of its output (a masked store, a grid one
block short) returns whatever was there, often zeros, and tests pass. Within `nan_filled_empty()`
each such call whose caller (the frame that called the factory) belongs to a module named
`attentions.*` gets its floating-point tensor filled with NaN first; everyone else's allocations
(torch, Triton, the harness, the tests) are left alone. Integer and bool tensors have no NaN and
are left as they are. Used by every test in tests/gpu (conftest.py); tested on CPU in
tests/test_gpu_helpers.py with a function that reads memory it never wrote.
"""

from __future__ import annotations

import contextlib
import functools
import math
import sys
from collections.abc import Callable, Iterator

import torch

FACTORIES = ("empty", "empty_like", "empty_strided")  # functions of the torch module
METHODS = ("new_empty", "new_empty_strided")  # methods of torch.Tensor


def _filling(make: Callable[..., torch.Tensor], prefix: str, log: list[str]) -> Callable[..., torch.Tensor]:
    """`make` that NaN-fills what it returns when its caller's module name starts with `prefix`."""

    @functools.wraps(make)
    def wrapper(*args, **kwargs) -> torch.Tensor:
        out = make(*args, **kwargs)
        caller = sys._getframe(1).f_globals.get("__name__", "")  # the frame that called torch.empty*
        if caller.startswith(prefix) and (out.is_floating_point() or out.is_complex()):
            with torch.no_grad():
                out.fill_(math.nan)
            log.append(caller)
        return out

    return wrapper


@contextlib.contextmanager
def nan_filled_empty(prefix: str = "attentions.") -> Iterator[list[str]]:
    """Within the block, torch.empty* called from modules `prefix*` return NaN-filled tensors.

    Yields the list of the calling modules' names, one entry per filled allocation. Restores the
    originals on exit, also on error.
    """
    log: list[str] = []
    saved = [(torch, name, getattr(torch, name)) for name in FACTORIES]
    saved += [(torch.Tensor, name, getattr(torch.Tensor, name)) for name in METHODS]
    try:
        for owner, name, original in saved:
            setattr(owner, name, _filling(original, prefix, log))
        yield log
    finally:
        for owner, name, original in saved:
            setattr(owner, name, original)
