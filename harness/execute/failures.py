"""How a failing case becomes a status: out-of-memory detection, one-line reasons, the timeout."""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator

import torch

from harness.measure.timing import CaseTimeout

OOM_MARKERS = ("out of memory", "can't allocate memory", "not enough memory", "DefaultCPUAllocator")


def is_oom(exc: BaseException) -> bool:
    """Whether `exc` is an out-of-memory failure of the CUDA or CPU allocator."""
    if isinstance(exc, torch.OutOfMemoryError | MemoryError):
        return True
    return isinstance(exc, RuntimeError) and any(m in str(exc) for m in OOM_MARKERS)


def one_line(exc: BaseException, limit: int = 300) -> str:
    """`Type: message` on one line, at most `limit` characters of message."""
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text[:limit]}"


@contextlib.contextmanager
def hard_timeout(seconds: float) -> Iterator[None]:
    """Raise `CaseTimeout` in the main thread after `seconds` (SIGALRM; no-op elsewhere).

    Python checks signals between bytecodes, so a single long native call is interrupted only
    when it returns to Python; the timer loop in measure/timing.py also checks its own budget.
    """
    if (
        not hasattr(signal, "setitimer")
        or seconds <= 0
        or threading.current_thread() is not threading.main_thread()
    ):
        yield
        return

    def _raise(signum: int, frame: object) -> None:
        raise CaseTimeout(f"case exceeded its {seconds:g} s limit")

    previous = signal.signal(signal.SIGALRM, _raise)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
