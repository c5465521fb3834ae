"""Peak bytes of live tensor storages during one step, from a dispatch-level hook (CPU memory pass).

PyTorch has no peak counters for its CPU allocator, and the profiler's memory timeline (the
method before this one, kept as `memory.measure_memory_profiler` for the comparison tests) holds
every event of the step with its shapes and Python stack: about 1.5 GB of resident memory for one
LUNA chunked fwd_bwd call at N = 2048 (a step of some 10^5 small ops) to report a 30 MB peak.

`StorageTracker` is a `TorchDispatchMode`: it sees every ATen op the step runs, the autograd
backward included (the engine carries the mode to the ops it runs), after autograd and the
composite decompositions. For each op:
    inputs   a tensor whose storage was not created during the step existed before it (inputs,
             parameters, buffers): its storage's bytes are added once to `base`;
    outputs  a storage not seen before was allocated by the op: its bytes are added to the
             running extra (a view or an in-place result shares a storage already counted), and
             a `weakref.finalize` on the storage (PyTorch keeps one Python object per storage
             alive as long as the storage lives) subtracts them when the storage is freed.
    peak_bytes = base + max(running extra), extra_bytes = max(running extra).
It holds one dict entry per live storage, never a trace, so its own memory is bounded by the
number of tensors alive at once. Limits: it sees storages that ops return, not the scratch an op
allocates and frees inside its kernel (e.g. the blocks of the CPU flash kernel, oneDNN
workspaces), nor memory outside PyTorch (numpy, the Python heap); a storage that an op resizes in
place (`out=` arguments) counts at the size it had when first seen and at each later sighting.
tests/test_memory.py checks it against the profiler timeline on small cases of every variant.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from typing import Any

from torch import Tensor
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves


class StorageTracker(TorchDispatchMode):
    """Counts bytes of storages that ops create on `device_type` while the mode is active."""

    def __init__(self, device_type: str = "cpu") -> None:
        super().__init__()
        self.device_type = device_type
        self.base = 0
        self.extra = 0
        self.peak_extra = 0
        self._preexisting: set[int] = set()  # StorageImpl addresses seen as inputs, never created
        self._created: dict[int, tuple[int, weakref.finalize]] = {}  # address -> (bytes, finalizer)

    def _storage(self, t: Tensor) -> tuple[int, Any] | None:
        if t.device.type != self.device_type or t.is_meta:
            return None
        storage = t.untyped_storage()
        if storage.data_ptr() == 0 and storage.nbytes() == 0:
            return None
        return storage._cdata, storage

    def _see_input(self, t: Tensor) -> None:
        found = self._storage(t)
        if found is None:
            return
        key, storage = found
        if key not in self._created and key not in self._preexisting:
            self._preexisting.add(key)
            self.base += storage.nbytes()

    def _see_output(self, t: Tensor) -> None:
        found = self._storage(t)
        if found is None:
            return
        key, storage = found
        nbytes = storage.nbytes()
        if key in self._created:
            counted, fin = self._created[key]
            if nbytes != counted:  # resized in place by an `out=` op
                self._created[key] = (nbytes, fin)
                self._grow(nbytes - counted)
            return
        if key in self._preexisting:
            return
        self._created[key] = (nbytes, weakref.finalize(storage, self._freed, key))
        self._grow(nbytes)

    def _grow(self, nbytes: int) -> None:
        self.extra += nbytes
        self.peak_extra = max(self.peak_extra, self.extra)

    def _freed(self, key: int) -> None:
        nbytes, _fin = self._created.pop(key, (0, None))
        self.extra -= nbytes

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        for leaf in tree_leaves((args, kwargs)):
            if isinstance(leaf, Tensor):
                self._see_input(leaf)
        out = func(*args, **kwargs)
        for leaf in tree_leaves(out):
            if isinstance(leaf, Tensor):
                self._see_output(leaf)
        return out

    def close(self) -> None:
        """Detach the finalizers of storages still alive, so nothing calls back after the step."""
        for _nbytes, fin in self._created.values():
            fin.detach()
        self._created.clear()
        self._preexisting.clear()


def tracked_peak(step: Callable[[], None], device_type: str = "cpu") -> tuple[int, int]:
    """Run `step` once under a `StorageTracker`; return (peak_bytes, extra_bytes) of its storages."""
    tracker = StorageTracker(device_type)
    try:
        with tracker:
            step()
    finally:
        tracker.close()
    return tracker.base + tracker.peak_extra, tracker.peak_extra


__all__ = ["StorageTracker", "tracked_peak"]
