"""The run directory: created once, reopened only by `--resume` of the same scenario, one writer.

run.json          run_id, scenario path and name, scenario_hash, git sha, started_at, argv
scenario.json     the validated scenario (workers plan from it)
writer.lock       pid (and its process start time), host and start of the process writing the run
                  (absent when none)
locks/run.flock   held (flock, shared) by every live process of the run: the runner, its jobs,
                  their workers; a dead run's lock is taken over only when nobody holds it
env.json          the first machine fingerprint; envs/<env_id>.json one per worker environment
records.<w>.jsonl / started.<w>.jsonl   each worker's records and start markers
canary.<w>.jsonl  the drift canary's timings (measure/canary.py), read by `compare`
records.jsonl     every case once (merged by finalize), records.parquet, report.md, plots/
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import sys
import uuid
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path

from harness.common.errors import UserError
from harness.common.files import ensure_dir, read_json_file, write_atomic
from harness.config.identity import NOT_PLANNED, body_hash, changed_keys, scenario_body
from harness.config.scenario import Scenario, scenario_to_dict
from harness.results.run_records import read_run_records, repair_run

LOCK = "writer.lock"
ALIVE = "run.flock"  # under locks/: held shared by every live process of the run


class RunDirError(UserError, ValueError):
    """A run directory that cannot be used as asked; `str(err)` is one line (exit 2)."""


def process_start_time(pid: int) -> float | None:
    """When process `pid` started (clock ticks after boot, /proc/<pid>/stat), None when no such
    process lives. With the pid it names one process: a pid reused later has another start time.
    Without /proc (not Linux) a live process gives 0.0."""
    if pid <= 0:
        return None
    try:
        stat = Path(f"/proc/{pid}/stat").read_text(encoding="utf-8", errors="replace")
        return float(stat.rsplit(")", 1)[1].split()[19])  # field 22: starttime
    except FileNotFoundError:
        return None
    except (OSError, IndexError, ValueError):
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        return 0.0
    return 0.0


_HELD: list[int] = []  # descriptors of run.flock this process holds (until it exits)


def _flock_path(run_dir: Path) -> Path:
    return ensure_dir(Path(run_dir) / "locks") / ALIVE


def hold_run(run_dir: Path) -> int | None:
    """Hold a shared lock on `locks/run.flock` until this process exits (or closes the returned
    descriptor): every process writing a run (the runner, its jobs, their workers) does, so the
    kernel knows whether any of them lives (a flock dies with its process). A file system without
    flock (ENOLCK, ENOSYS) holds none (None)."""
    try:
        fd = os.open(_flock_path(run_dir), os.O_RDWR | os.O_CREAT, 0o644)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH)
    except OSError:
        os.close(fd)
        return None
    _HELD.append(fd)
    return fd


def _earlier_writers_alive(run_dir: Path) -> bool:
    """True when a process of an earlier run still holds `locks/run.flock`."""
    try:
        fd = os.open(_flock_path(run_dir), os.O_RDWR | os.O_CREAT, 0o644)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    except OSError:  # no flock on this file system: cannot tell, the pid check stands alone
        return False
    finally:
        os.close(fd)  # releases the probe's lock
    return False


def _holder_alive(holder: dict, path: Path) -> tuple[int, bool]:
    """(pid, alive) of the process named in a writer.lock on this host: alive when that pid runs
    and, where the lock recorded it, started when the lock says (not a reused pid)."""
    raw = holder.get("pid", 0)
    if isinstance(raw, bool) or not isinstance(raw, int):
        raise RunDirError(
            f"{path}: pid {str(raw)[:40]!r} is not a process id; if no run is writing here, delete this file"
        )
    started = process_start_time(raw)
    recorded = holder.get("started")
    alive = started is not None and (not isinstance(recorded, (int, float)) or recorded == started)
    return raw, alive


@contextlib.contextmanager
def writer_lock(run_dir: Path, resume: bool) -> Iterator[None]:
    """Hold `run_dir/writer.lock` (O_EXCL) while a run writes; refuse a second writer.

    A lock left by a dead process on this host is taken over by `--resume`, and only when no
    process of that run lives (its submitit jobs and workers hold `locks/run.flock`); a live
    holder, or one on another host (its liveness cannot be checked here), is refused with its
    pid and host.
    """
    path = Path(run_dir) / LOCK
    me = {
        "pid": os.getpid(),
        "started": process_start_time(os.getpid()),
        "host": socket.gethostname(),
        "since": _now(),
        "argv": sys.argv,
    }
    for _ in range(2):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            holder = _read_json(path)
            host = str(holder.get("host", "?"))
            pid, alive = _holder_alive(holder, path)
            stale = host == socket.gethostname() and pid > 0 and not alive
            if not stale:
                where = f"pid {pid} on {host} since {holder.get('since', '?')}"
                hint = "" if host == socket.gethostname() else f"; if that run is gone, delete {path}"
                raise RunDirError(f"{run_dir}: another run is writing here ({where}){hint}") from None
            if _earlier_writers_alive(run_dir):
                raise RunDirError(
                    f"{run_dir}: the run of pid {pid} died, but processes of it (jobs or workers) still "
                    "write here; wait for them to end or kill them, then --resume"
                ) from None
            if not resume:
                raise RunDirError(
                    f"{run_dir}: a run that died (pid {pid} on {host}) left it unfinished; "
                    "continue it with --resume or choose another --out"
                ) from None
            path.unlink(missing_ok=True)  # stale: take it over
            continue
        with os.fdopen(fd, "w") as fh:
            json.dump(me, fh)
        break
    held = None
    try:
        if _earlier_writers_alive(run_dir):
            raise RunDirError(
                f"{run_dir}: processes of an earlier run (jobs or workers) still write here; "
                "wait for them to end or kill them"
            )
        held = hold_run(run_dir)
        yield
    finally:
        if _read_json(path).get("pid") == os.getpid():
            path.unlink(missing_ok=True)
        if held is not None:
            _HELD.remove(held)
            os.close(held)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _read_json(path: Path) -> dict:
    """The JSON object in `path`; {} when absent or unreadable (a FIFO or device: UnsafePathError)."""
    try:
        data = read_json_file(Path(path))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def open_run_dir(
    out_dir: Path, scenario: Scenario, resume: bool, argv: list[str], git_sha: str, arg: str
) -> str:
    """Create `out_dir` for `scenario`, or reopen it with `resume`; returns the run id.

    Resume is refused (one line) when the directory holds another scenario or an edited one,
    naming the keys that changed; a new run is refused where records already exist.
    """
    run_json = out_dir / "run.json"
    body = scenario_body(scenario)
    if resume:
        meta = _read_json(run_json)
        if not meta:
            raise RunDirError(f"{out_dir}: --resume: no readable run.json here; nothing to resume")
        if meta.get("scenario_name") != scenario.name:
            raise RunDirError(
                f"{out_dir}: --resume: this run is of scenario {meta.get('scenario_name')!r}, "
                f"not {scenario.name!r}"
            )
        if meta.get("scenario_hash") and meta["scenario_hash"] != body_hash(body):
            old = _read_json(out_dir / "scenario.json")
            keys = changed_keys({k: v for k, v in old.items() if k not in NOT_PLANNED}, body) or ["(unknown)"]
            shown = ", ".join(keys[:6]) + (f" and {len(keys) - 6} more" if len(keys) > 6 else "")
            raise RunDirError(
                f"{out_dir}: --resume: the scenario changed since this run was planned ({shown}); "
                "resume with the original scenario or start a new --out"
            )
        repair_run(out_dir)
        return str(meta["run_id"])
    if read_run_records(out_dir):
        raise RunDirError(
            f"{out_dir}: already holds records; pass --resume to continue it or choose another --out"
        )
    out_dir.mkdir(parents=True, exist_ok=True)
    run_id = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ-") + uuid.uuid4().hex[:6]
    meta = {
        "run_id": run_id,
        "scenario_path": scenario.path,
        "scenario_arg": arg,
        "scenario_name": scenario.name,
        "scenario_hash": body_hash(body),
        "git_sha": git_sha,
        "started_at": _now(),
        "argv": argv,
    }
    write_atomic(run_json, json.dumps(meta, indent=2) + "\n")
    write_atomic(
        out_dir / "scenario.json", json.dumps(scenario_to_dict(scenario), indent=2, default=str) + "\n"
    )
    return run_id
