"""The canary: a small fixed workload timed on a run's device at intervals through the run.

Two runs of the same code on a shared machine differ mostly by drift between them (other load,
clocks, thermal state), which no statistic inside one run can see. Every run therefore times the
same fixed workload (a 512x512 fp32 matmul: compute; a 64 MiB copy: bandwidth; both timed in
short slices) at its start, every `CANARY_INTERVAL_S` seconds between cases and at its end, and
appends one JSON line per timing to `canary.<worker>.jsonl` in the run directory (append-only,
fsynced: it survives `--resume`, which only adds lines, and every child worker writes its own).
`compare` divides the head run's case times by the canary ratio between the runs
(harness/regress/drift.py). A canary timing holds the same device lock as a case's timed pass,
so it never runs while a case is timed.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from statistics import median
from typing import Any

import torch

from harness.common.files import append_line

CANARY_GLOB = "canary.*.jsonl"
CANARY_INTERVAL_S = 5.0  # at most one timing per worker per interval between cases
MATMUL_N = 512  # (512, 512) @ (512, 512) fp32: 268 MFLOP
COPY_BYTES = 64 * 1024 * 1024  # one 64 MiB fp32 buffer copied into another
REPS = 2  # passes per canary point over each workload's slices; the medians are kept
MATMUL_SLICES = 8  # the matmul is timed as 8 row slices (64, 512) @ (512, 512): ~0.2 ms each on a core
COPY_CHUNKS = 64  # the 64 MiB copy is timed as 64 slices of 1 MiB
WORKLOADS = ("matmul_ms", "copy_ms")


def _timer(device: torch.device) -> Callable[[Callable[[], None]], float]:
    """Milliseconds of one call; synchronizes around it on CUDA (the workloads are a few ms, so a
    host clock with a synchronize on both sides is accurate enough)."""

    def timed(fn: Callable[[], None]) -> float:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return (time.perf_counter() - t0) * 1e3

    return timed


_BUFFERS: dict[torch.device, tuple[torch.Tensor, ...]] = {}


def _buffers(dev: torch.device) -> tuple[torch.Tensor, ...]:
    """a, b, c (512, 512) fp32 and src, dst (16 Mi,) fp32 on `dev`, seeded, allocated once per
    process (a canary point then costs its timed work, not 128 MiB of page faults)."""
    if dev not in _BUFFERS:
        gen = torch.Generator(device="cpu").manual_seed(0)
        a = torch.randn(MATMUL_N, MATMUL_N, generator=gen).to(dev)
        b = torch.randn(MATMUL_N, MATMUL_N, generator=gen).to(dev)
        src = torch.ones(COPY_BYTES // 4, dtype=torch.float32, device=dev)
        _BUFFERS[dev] = (a, b, torch.empty_like(a), src, torch.empty_like(src))
    return _BUFFERS[dev]


def time_canary(device: str, reps: int = REPS) -> dict[str, Any]:
    """Time the canary workloads once on `device` ("cpu", "cuda", "cuda:1").

    Returns {"matmul_ms", "copy_ms"} plus the raw samples ({"matmul_samples", "copy_samples"}).
    matmul: a (512, 512) @ b (512, 512) -> c, computed as MATMUL_SLICES row slices of a, each
    slice a sample; matmul_ms = median slice time x MATMUL_SLICES. copy: src -> dst (16 Mi,) fp32 =
    64 MiB in COPY_CHUNKS slices, the same way. `reps` passes of each, after one warm-up pass.
    Short samples and a median, like a case's timing: on a loaded CPU a 2-20 ms call is almost
    always preempted and a 0.2 ms one mostly not (measured here at load 12 on 2 cores: a whole
    512x512 matmul took 2-30 ms), so one long timed call would measure the scheduler.
    """
    dev = torch.device(device)
    a, b, c, src, dst = _buffers(dev)
    timed = _timer(dev)
    torch.mm(a, b, out=c)  # warm-up: first touch of the pages, kernel selection
    dst.copy_(src)
    rows = MATMUL_N // MATMUL_SLICES
    matmul = [
        timed(lambda i=i: torch.mm(a[i * rows : (i + 1) * rows], b, out=c[i * rows : (i + 1) * rows]))
        for _ in range(reps)
        for i in range(MATMUL_SLICES)
    ]
    chunk = src.numel() // COPY_CHUNKS
    copy = [
        timed(lambda i=i: dst[i * chunk : (i + 1) * chunk].copy_(src[i * chunk : (i + 1) * chunk]))
        for _ in range(reps)
        for i in range(COPY_CHUNKS)
    ]
    return {
        "matmul_ms": float(median(matmul)) * MATMUL_SLICES,
        "copy_ms": float(median(copy)) * COPY_CHUNKS,
        "matmul_samples": matmul,
        "copy_samples": copy,
    }


def record_canary(run_dir: Path, worker: str, device: str, where: str) -> dict[str, Any]:
    """Time the canary and append it to `run_dir/canary.<worker>.jsonl` (one line, fsynced).

    `where`: "start", "between" (between cases) or "end"; the caller holds the device lock."""
    line = {
        "at": datetime.now(timezone.utc).isoformat(timespec="microseconds"),
        "t": time.time(),
        "worker": worker,
        "device": device,
        "threads": torch.get_num_threads(),
        "where": where,
        **time_canary(device),
    }
    append_line(Path(run_dir) / f"canary.{worker}.jsonl", json.dumps(line) + "\n")  # fsynced
    return line


def read_canary(run_dir: Path) -> list[dict[str, Any]]:
    """Every complete canary line of a run (all workers, in time order); torn or foreign lines
    (a run killed mid-write, a hand-edited file) are skipped: a canary is evidence, not input."""
    points: list[dict[str, Any]] = []
    for path in sorted(Path(run_dir).glob(CANARY_GLOB)):
        for raw in path.read_text(encoding="utf-8", errors="replace").splitlines():
            try:
                point = json.loads(raw)
            except ValueError:
                continue
            values = [point.get(k) for k in WORKLOADS] if isinstance(point, dict) else [None]
            if all(isinstance(v, int | float) and not isinstance(v, bool) and v > 0 for v in values):
                points.append(point)
    return sorted(points, key=lambda p: float(p.get("t") or 0.0))


class CanaryClock:
    """Decides when a worker times the canary: at its first chance, then whenever
    `interval_s` has passed since its last timing (checked between cases)."""

    def __init__(self, run_dir: Path, worker: str, device: str, interval_s: float = CANARY_INTERVAL_S):
        self.run_dir, self.worker, self.device, self.interval_s = Path(run_dir), worker, device, interval_s
        self.last: float | None = None

    def due(self) -> bool:
        return self.last is None or time.monotonic() - self.last >= self.interval_s

    def tick(self, where: str = "between") -> dict[str, Any]:
        """Time the canary now (the caller holds the device lock)."""
        line = record_canary(self.run_dir, self.worker, self.device, where)
        self.last = time.monotonic()
        return line
