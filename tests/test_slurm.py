"""The `slurm` executor against a real Slurm controller (marker `slurm`; `.ci/run` starts a
one-node cluster with bench/slurm_local.sh first). Each test skips with the reason where no
controller answers. The scheduler's own faults: a job requeued or cancelled mid-case, a job past
its time limit, a case that segfaults inside a job; every case is recorded exactly once.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from harness.results.run_records import read_run_records

pytestmark = pytest.mark.slurm

ROOT = Path(__file__).resolve().parents[1]
PLUGINS = ROOT / "tests" / "fixtures" / "plugins"


@pytest.fixture(autouse=True)
def cluster() -> None:
    pytest.importorskip("submitit")
    if shutil.which("sinfo") is None:
        pytest.skip("no Slurm here (sinfo not on PATH); bench/slurm_local.sh start brings one up")
    from harness.execute.slurm import controller_problem

    problem = controller_problem()
    if problem is not None:
        pytest.skip(f"no Slurm controller answers: {problem}")


def scenario(tmp_path: Path, variant: str, lengths: list[int], name: str = "s.yaml") -> Path:
    path = tmp_path / name
    path.write_text(
        f"""name: slurm-test
device: cpu
problem: {{batch: 1, heads: 2, head_dim: 8, seq_len: {lengths}, mode: fwd}}
variants:
{variant}
accuracy: {{rows: 8}}
checks: {{causality: false, batch_independence: false}}
measure: {{warmup_ms: 0, min_samples: 1, rep_ms: 0, memory: false, timeout_s: 60}}
"""
    )
    return path


def command(path: Path, out: Path, *args: str) -> list[str]:
    return [
        sys.executable, str(ROOT / "run_bench.py"), str(path), "--out", str(out), "--quiet", "--no-plots",
        "--executor", "slurm", *args,
    ]  # fmt: skip


def env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": f"{PLUGINS}{os.pathsep}{ROOT}"}


def run(path: Path, out: Path, *args: str, timeout: float = 240) -> subprocess.CompletedProcess:
    cmd = command(path, out, *args)
    return subprocess.run(cmd, cwd=ROOT, env=env(), capture_output=True, text=True, timeout=timeout)


def recorded_once(out: Path) -> dict[str, dict]:
    """Every worker file's records by case id, asserting no case was recorded twice."""
    ids = [
        r["case_id"]
        for path in out.glob("records.*.jsonl")
        for r in map(json.loads, path.read_text().splitlines())
    ]
    assert len(ids) == len(set(ids)), sorted(ids)
    return {r["case_id"]: r for r in read_run_records(out)}


def wait_for_starts(out: Path, worker: str, count: int, proc: subprocess.Popen, limit: float = 120) -> None:
    """Until `worker` has marked `count` cases started (the last one is running now)."""
    path = out / f"started.{worker}.jsonl"
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()
        if path.exists() and len(path.read_text().splitlines()) >= count:
            return
        time.sleep(0.2)
    raise AssertionError(f"{worker} did not start {count} cases in {limit} s")


def job_ids(out: Path) -> list[str]:
    """The Slurm ids of the run's jobs (`12_0`, `12_1` for an array; `12` for one job alone)."""
    names = [p.name.removesuffix("_submitted.pkl") for p in (out / "submitit").glob("*_submitted.pkl")]
    return sorted(names, key=lambda n: [int(x) for x in n.split("_")])


@pytest.fixture(autouse=True)
def no_jobs_left(tmp_path: Path):
    """A failed test cancels the jobs its run left (the cluster outlives the submitting process)."""
    yield
    for folder in tmp_path.glob("*/submitit"):
        subprocess.run(["scancel", *job_ids(folder.parent)], capture_output=True, timeout=30)


@contextlib.contextmanager
def no_requeue_delay(out: Path) -> Iterator[None]:
    """Slurm holds a requeued job for 120 s (its BeginTime); release it at once, so the test is short."""
    stop = threading.Event()

    def release() -> None:
        while not stop.wait(1.0):
            if not (out / "submitit").exists():
                continue
            ids = ",".join(sorted({j.split("_")[0] for j in job_ids(out)}))
            res = subprocess.run(
                ["squeue", "-h", "-r", "-t", "PD", "-o", "%i %r", "-j", ids], capture_output=True, text=True
            )
            for line in res.stdout.splitlines():
                jid, _, reason = line.partition(" ")
                if reason.strip() == "BeginTime":
                    subprocess.run(
                        ["scontrol", "update", f"jobid={jid}", "StartTime=now"], capture_output=True
                    )

    thread = threading.Thread(target=release, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def slurm_cmd(*args: str) -> None:
    subprocess.run(list(args), check=True, capture_output=True, text=True, timeout=30)


def test_a_sweep_is_recorded_once_and_a_segfault_costs_one_case(tmp_path: Path) -> None:
    variants = "  - name: crashy\n    params: {crash: segv, at: 24}\n  - name: softmax"
    out = tmp_path / "run"
    res = run(scenario(tmp_path, variants, [16, 24, 32]), out, "--max-jobs", "2", "--cases-per-job", "3")
    assert res.returncode == 3, res.stderr  # finished, with one crashed case
    recs = recorded_once(out)
    assert len(recs) == 6
    crashed = [r for r in recs.values() if r["status"] != "ok"]
    assert len(crashed) == 1 and crashed[0]["seq_len"] == 24 and crashed[0]["status"] == "crashed"
    assert "killed by signal 11 (SIGSEGV)" in crashed[0]["reason"]
    assert "job log:" in crashed[0]["reason"] and Path(crashed[0]["info"]["job_log"]).exists()
    node = socket.gethostname().split(".")[0]
    assert {r["slurm_node"] for r in recs.values()} == {node}
    assert {r["slurm_array_task_id"] for r in recs.values()} == {"0", "1"}  # two groups of 3: two jobs
    assert len({r["slurm_job_id"] for r in recs.values()}) == 1 and crashed[0]["slurm_job_id"].isdigit()
    assert "Bypassing sacct" not in res.stderr and res.stderr.count("no accounting") <= 1


def test_a_job_requeued_mid_case_runs_that_case_again_and_records_it_once(tmp_path: Path) -> None:
    variants = "  - name: crashy\n    params: {sleep_s: 1.0}"
    out = tmp_path / "run"
    path = scenario(tmp_path, variants, [16, 24, 32, 40])
    proc = subprocess.Popen(command(path, out), cwd=ROOT, env=env(), stderr=subprocess.PIPE, text=True)
    try:
        wait_for_starts(out, "job0", 2, proc)  # the second case is running
        with no_requeue_delay(out):
            slurm_cmd("scontrol", "requeue", job_ids(out)[0])
            _, err = proc.communicate(timeout=300)
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    recs = recorded_once(out)
    assert len(recs) == 4 and all(r["status"] == "ok" for r in recs.values())
    marks = [json.loads(line)["case_id"] for line in (out / "started.job0.jsonl").read_text().splitlines()]
    assert len(marks) > len(set(marks))  # the interrupted case started twice, recorded once


def test_a_job_cancelled_mid_case_records_that_case_crashed_and_resume_runs_the_rest(tmp_path: Path) -> None:
    variants = "  - name: crashy\n    params: {sleep_s: 1.0}"
    out = tmp_path / "run"
    path = scenario(tmp_path, variants, [16, 24, 32, 40])
    proc = subprocess.Popen(command(path, out), cwd=ROOT, env=env(), stderr=subprocess.PIPE, text=True)
    try:
        wait_for_starts(out, "job0", 2, proc)
        slurm_cmd("scancel", job_ids(out)[0])
        _, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 3, err
    recs = recorded_once(out)
    [lost] = [r for r in recs.values() if r["status"] == "crashed"]
    assert "CANCELLED" in lost["reason"] and "job log:" in lost["reason"], lost["reason"]
    assert lost["slurm_job_id"] == job_ids(out)[0]  # one job alone: no array task id
    assert len(recs) < 4 and "continue with --resume" in err
    again = run(path, out, "--resume")
    assert again.returncode == 3, again.stderr  # the cancelled case stays crashed (--retry-crashed reruns it)
    recs = recorded_once(out)
    assert len(recs) == 4 and [r["status"] for r in recs.values()].count("ok") == 3


def test_a_job_past_its_time_limit_is_requeued_by_its_checkpoint_and_finishes(tmp_path: Path) -> None:
    """A one-minute job with about 70 s of cases: submitit's signal before the limit checkpoints
    and requeues it; the requeued job skips what was recorded and finishes."""
    variants = "  - name: crashy\n    params: {sleep_s: 1.0}"
    out = tmp_path / "run"
    path = scenario(tmp_path, variants, list(range(16, 16 + 8 * 24, 8)))  # 24 cases of ~3 s
    with no_requeue_delay(out):
        res = run(path, out, "--time-min", "1", "--cases-per-job", "100", timeout=420)
    assert res.returncode == 0, res.stderr
    recs = recorded_once(out)
    assert len(recs) == 24 and all(r["status"] == "ok" for r in recs.values())
    log = next((out / "submitit").glob("*_0_log.err")).read_text()
    assert "this job is timed-out" in log and "DUE TO JOB REQUEUE" in log, log[-2000:]
