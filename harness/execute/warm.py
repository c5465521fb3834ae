"""Child workers started before the runner itself has finished starting up.

A child worker's start-up is mostly importing torch and the harness (about 1.3 s on a 2-core
CPU). `run_bench.py` starts the children it will need (`prespawn`) before it imports anything
heavy, so both imports overlap; `ChildWorker` then adopts a warm child (`take`) instead of
starting one, and tells it which run to work on. Warm children nobody takes are ended at exit
(the hook is registered by the first `prespawn`, not at import). Only a run whose scenario and
options are valid prespawns: bad input never starts an interpreter. This module imports nothing
heavy on purpose.
"""

from __future__ import annotations

import atexit
import os
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from harness.common.files import open_append


@dataclass
class WarmChild:
    proc: subprocess.Popen
    stderr_path: str
    env: dict[str, str] = field(default_factory=dict)  # the extra environment it was started with


_POOL: list[WarmChild] = []
_HOOKED = False  # the atexit hook that ends untaken children is registered
# The folder holding this `harness` package: first on the child's PYTHONPATH, so the child runs
# the same code as its parent from any working directory (`run-bench quick` outside a checkout).
CODE_ROOT = str(Path(__file__).resolve().parents[2])


def _child_env(env: dict[str, str] | None) -> dict[str, str]:
    merged = {**os.environ, **(env or {}), "PYTHONUNBUFFERED": "1"}
    merged["PYTHONPATH"] = os.pathsep.join(filter(None, [CODE_ROOT, merged.get("PYTHONPATH")]))
    return merged


def spawn(env: dict[str, str] | None = None, stderr_path: str | None = None) -> WarmChild:
    """Start `python -m harness.execute.worker` waiting for its run on stdin (its own session)."""
    if stderr_path is None:
        fd, stderr_path = tempfile.mkstemp(prefix="attnbench-worker-", suffix=".stderr.log")
        os.close(fd)
    with open_append(Path(stderr_path)) as err:  # never through a symlink planted in logs/
        proc = subprocess.Popen(
            [sys.executable, "-m", "harness.execute.worker"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=err,
            env=_child_env(env),
            start_new_session=True,  # its own process group: a kill takes its children too
            text=True,
        )
    return WarmChild(proc, stderr_path, dict(env or {}))


def prespawn(count: int, env: dict[str, str] | None = None) -> None:
    """Start `count` children for `env` (default: the default environment, no device pinning); the
    ones nobody takes are ended at exit (the hook is registered here, on first use, never at import)."""
    global _HOOKED
    if count > 0 and not _HOOKED:
        atexit.register(_discard)
        _HOOKED = True
    for _ in range(count):
        _POOL.append(spawn(env))


def take(env: dict[str, str]) -> WarmChild | None:
    """A live warm child started with exactly `env`, or None."""
    for child in list(_POOL):
        if child.env == env:
            _POOL.remove(child)
            if child.proc.poll() is None:
                return child
    return None


def _discard() -> None:
    for child in _POOL:
        if child.proc.poll() is None:
            os.killpg(child.proc.pid, signal.SIGKILL)
            child.proc.wait()
        if os.path.exists(child.stderr_path):
            os.unlink(child.stderr_path)
    _POOL.clear()
