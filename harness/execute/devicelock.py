"""One timed measurement per device at a time, across every worker of a run.

Workers sharing a device (two CPU workers on one machine, or two jobs on one GPU) would otherwise
time their cases against each other. The timed and memory passes of a case hold an exclusive
`flock` on `run_dir/locks/<device>.lock`; inputs, fitting, accuracy and the checks run unlocked, in
parallel. The lock is released when its process dies, so a crashed worker never blocks the rest.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
from collections.abc import Iterator
from pathlib import Path

from harness.common.files import ensure_dir, open_append


def device_key(device: str, uuid: str = "", visible: str = "") -> str:
    """A file-name-safe name of the physical device: `cpu`, or `cuda-<uuid or visible ids>`."""
    if device == "cpu":
        return "cpu"
    ident = uuid or visible or os.environ.get("CUDA_VISIBLE_DEVICES", "") or "0"
    return "cuda-" + re.sub(r"[^A-Za-z0-9_.-]", "_", ident)


@contextlib.contextmanager
def device_lock(run_dir: Path, key: str) -> Iterator[None]:
    """Hold the run's lock of device `key` (blocking until free)."""
    folder = ensure_dir(Path(run_dir) / "locks")
    with open_append(folder / f"{key}.lock") as fh:  # never through a planted symlink
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)
