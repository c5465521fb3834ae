"""How a failing case becomes a status: out-of-memory detection, one-line reasons, traceback tails,
the timeout."""

from __future__ import annotations

import contextlib
import signal
import threading
import traceback
from collections.abc import Iterator

import torch

from harness.measure.timing import CaseTimeout

OOM_MARKERS = ("out of memory", "can't allocate memory", "not enough memory", "DefaultCPUAllocator")


TRACE_LINES = 12  # lines of a failed case's traceback kept in its record (`error_trace`)


def safe_str(exc: BaseException) -> str:
    """`str(exc)`, or a placeholder when the exception's own `__str__` raises (a faulty variant
    must not take the sweep down with it)."""
    try:
        return str(exc)
    except Exception as err:  # noqa: BLE001 - any failure of a third-party __str__
        return f"<str() of the exception failed: {type(err).__name__}>"


def is_oom(exc: BaseException) -> bool:
    """Whether `exc` is an out-of-memory failure of the CUDA or CPU allocator."""
    if isinstance(exc, torch.OutOfMemoryError | MemoryError):
        return True
    return isinstance(exc, RuntimeError) and any(m in safe_str(exc) for m in OOM_MARKERS)


def one_line(exc: BaseException, limit: int = 300) -> str:
    """`Type: message` on one line, at most `limit` characters of message."""
    text = " ".join(safe_str(exc).split())
    return f"{type(exc).__name__}: {text[:limit]}"


def trace_tail(exc: BaseException, lines: int = TRACE_LINES) -> str:
    """The last `lines` lines of `exc`'s traceback (where in the variant it failed), as one string;
    `traceback` itself survives an exception whose `__str__` raises."""
    text = "".join(traceback.format_exception(exc)).rstrip("\n").splitlines()
    return "\n".join(text[-lines:])


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
