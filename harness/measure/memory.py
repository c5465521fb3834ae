"""Peak memory of one call of a benchmark step, in its own pass (never inside timing).

CUDA ("cuda_caching_allocator"): synchronize, `empty_cache`, `reset_peak_memory_stats`, read
`memory_allocated()` as the base (inputs, parameters, anything else alive), run the step once,
synchronize, read `max_memory_allocated()` as the peak. These are bytes of live tensors as the
caching allocator sees them (block-rounded), not the reserved pool.

CPU ("storage_tracker", the default): `memtrack.StorageTracker`, a dispatch-level hook counting
the bytes of tensor storages created and freed during the step (see memtrack.py for what it sees
and what not); its memory is one dict entry per live storage.

CPU ("torch_profiler_memory_timeline", `measure_memory_profiler`, the method before it, kept to
check the tracker against in tests/test_memory.py; it holds the whole trace with stacks, about
1.5 GB resident for one LUNA chunked fwd_bwd call at N = 2048): one call
runs under `torch.profiler.profile(profile_memory=True, record_shapes=True, with_stack=True)` and
the profiler's memory timeline (`prof._memory_profile().timeline`, entries
`(time_ns, action, (key, version), size_bytes)`) is replayed in time order:
    PREEXISTING        tensors used by the step but allocated before it (inputs, parameters):
                       their sum is `base`;
    CREATE / DESTROY   an allocation / a free during the step: +size / -size on the running extra;
    INCREMENT_VERSION  an in-place mutation (a new version of the same storage), or an untracked
                       pointer allocated again: no new bytes (torch's own MemoryProfileTimeline
                       moves the bytes from version v to v+1), so it is ignored.
    peak_bytes = base + max(running extra), extra_bytes = max(running extra).
Limits: it sees only allocations through PyTorch's CPU allocator (not numpy, not library scratch
such as oneDNN workspaces, not the Python heap); a tensor alive before the step but never used
by it is not in `base`; a free of a block allocated before profiling began (e.g. last step's
`.grad` dropped by `t.grad = None`) is invisible, so it never lowers the running extra; events at
the same nanosecond are ordered CREATE before DESTROY, which can only overestimate. Accuracy, as
measured in tests/test_memory.py: exact to the byte for known allocations (12 MB, 4 MB), and
within the autograd analysis (3 score matrices + a few (N, d) grads) for attention fwd_bwd.
The API is private to torch: if it fails, `MemoryMeasureError` says so and the runner records it.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from harness.measure.memtrack import tracked_peak

# Errors the private profiler API is known to raise on unsupported or unexpected traces.
_PROFILER_ERRORS = (
    AttributeError,
    AssertionError,
    ImportError,
    IndexError,
    KeyError,
    RuntimeError,
    TypeError,
    ValueError,
)


# Native lines the profiler writes to fd 2: kineto's start/stop markers on some builds, and c10's
# warning that a block allocated before profiling was freed (a limit documented above).
_KINETO_NOISE = re.compile(
    r"^(USDT:.*(profiler_start|profiler_stop)"
    r"|\[W.*CPUAllocator\.cpp:\d+\] Memory block of unknown size was allocated before the profiling"
    r" started.*)\s*$"
)


@contextlib.contextmanager
def _filtered_native_stderr() -> Iterator[None]:
    """Capture fd 2 (native writes included) and re-emit every line except the profiler's noise."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile(mode="w+b") as capture:
        os.dup2(capture.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            capture.seek(0)
            kept = [
                line
                for line in capture.read().decode(errors="replace").splitlines(keepends=True)
                if not _KINETO_NOISE.match(line)
            ]
            if kept:
                sys.stderr.write("".join(kept))
                sys.stderr.flush()


class MemoryMeasureError(RuntimeError):
    """Peak memory could not be measured (message says why); the case's timing is still valid."""


@dataclass
class MemoryResult:
    """Peak bytes during one step (`peak_bytes`), that peak minus the base (`extra_bytes`)."""

    peak_bytes: int
    extra_bytes: int
    method: str


def measure_memory(
    step: Callable[[], None], device: str | torch.device, reset_grads: Sequence[Tensor] = ()
) -> MemoryResult:
    """Run `step` once and report its peak memory on `device` ("cpu", "cuda", "cuda:1").

    reset_grads: tensors whose `.grad` is set to None before the base is read, so stale grads
    of earlier calls (e.g. from timing) count neither in the base nor as freed memory.
    Exceptions raised by `step` itself propagate unchanged.
    """
    for t in reset_grads:
        t.grad = None
    kind = torch.device(device).type
    if kind == "cuda":
        return _measure_cuda(step, torch.device(device))
    if kind == "cpu":
        peak, extra = tracked_peak(step, "cpu")
        return MemoryResult(peak_bytes=int(peak), extra_bytes=int(extra), method="storage_tracker")
    raise ValueError(f"no memory measurement for device {device!r}; expected 'cpu' or 'cuda[:index]'")


def _measure_cuda(step: Callable[[], None], device: torch.device) -> MemoryResult:
    if device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    with torch.cuda.device(device):
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        step()
        torch.cuda.synchronize(device)
        peak = torch.cuda.max_memory_allocated(device)
    return MemoryResult(peak_bytes=int(peak), extra_bytes=int(peak - base), method="cuda_caching_allocator")


def measure_memory_profiler(step: Callable[[], None], reset_grads: Sequence[Tensor] = ()) -> MemoryResult:
    """The CPU peak of one call of `step` from the profiler's memory timeline (see the module doc)."""
    for t in reset_grads:
        t.grad = None
    try:
        from torch.profiler import ProfilerActivity
        from torch.profiler._memory_profiler import Action

        prof = torch.profiler.profile(
            activities=[ProfilerActivity.CPU], profile_memory=True, record_shapes=True, with_stack=True
        )
        with _filtered_native_stderr():
            prof.start()
    except _PROFILER_ERRORS as err:
        raise MemoryMeasureError(f"torch profiler could not start: {type(err).__name__}: {err}") from err
    try:
        with _filtered_native_stderr():
            step()
    finally:
        with _filtered_native_stderr():
            prof.stop()
    try:
        timeline = prof._memory_profile().timeline
    except _PROFILER_ERRORS as err:
        raise MemoryMeasureError(
            f"torch profiler memory timeline failed (private API): {type(err).__name__}: {err}"
        ) from err

    base, extra, peak_extra = 0, 0, 0
    for _t, action, (key, _version), size in timeline:
        if key.device.type != "cpu":
            continue
        if action == Action.PREEXISTING:
            base += size
        elif action == Action.CREATE:
            extra += size
            peak_extra = max(peak_extra, extra)
        elif action == Action.DESTROY:
            extra -= size
        elif action != Action.INCREMENT_VERSION:
            raise MemoryMeasureError(f"unknown memory timeline action {action!r}")
    return MemoryResult(
        peak_bytes=int(base + peak_extra),
        extra_bytes=int(peak_extra),
        method="torch_profiler_memory_timeline",
    )
