"""Isolated workers: crashes, hangs and concurrent writers cost one case, never the sweep.

Tests of what happens to processes run the command line in a child process with the `crashy` test
plugin installed (an entry point on PYTHONPATH), as a user with a misbehaving variant would. Tests of
the run directory's bookkeeping (an edited scenario, a stale lock, bad options) call
harness.cli.main in this process, with crashy registered here (`crashy_inline`).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import pytest
import torch

from harness.results.run_records import read_run_records

ROOT = Path(__file__).resolve().parents[1]
PLUGINS = ROOT / "tests" / "fixtures" / "plugins"
LENGTHS = [16, 24, 32, 40]
CRASHY = "  - name: crashy\n    params: {crash: none, at: 24}\n"  # the crashy entry of scenario(..., "none")


def scenario(tmp_path: Path, crash: str, at: int = 24, extra: str = "", name: str = "s.yaml") -> Path:
    path = tmp_path / name
    path.write_text(
        f"""name: crash-test
device: cpu
problem: {{batch: 1, heads: 2, head_dim: 8, seq_len: {LENGTHS}, mode: fwd}}
variants:
  - name: crashy
    params: {{crash: {crash}, at: {at}}}
  - name: softmax
accuracy: {{rows: 8}}
measure: {{warmup_ms: 0, min_samples: 2, rep_ms: 0, memory: false, timeout_s: 3}}
{extra}"""
    )
    return path


def cli(*args: str, timeout: float = 240, path: str | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": f"{PLUGINS}{os.pathsep}{ROOT}"}
    if path is not None:
        env["PATH"] = path
    cmd = [sys.executable, str(ROOT / "run_bench.py"), *args]
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def crashy_inline(monkeypatch, capsys):
    """`run-bench ARGS` in this process with the crashy plugin registered: (exit code, stderr)."""
    from harness.cli import main
    from harness.plugins.variants import VARIANTS

    monkeypatch.syspath_prepend(str(PLUGINS))
    VARIANTS.register("crashy", "crashy_plugin:CrashyVariant")

    def run_cli(*args: str) -> tuple[int, str]:
        capsys.readouterr()
        code = main(list(args))
        return code, capsys.readouterr().err

    yield run_cli
    VARIANTS.unregister("crashy")


def statuses(out: Path) -> dict[tuple[str, int], dict]:
    return {(r["variant"], r["seq_len"]): r for r in read_run_records(out)}


@pytest.mark.parametrize(
    "crash,needle",
    [
        ("segv", "killed by signal 11 (SIGSEGV)"),
        # the same path as segv (a child killed by a signal), three full runs each: the slow pass
        pytest.param("kill", "killed by signal 9 (SIGKILL)", marks=pytest.mark.slow),
        pytest.param("exit", "exited with code 3", marks=pytest.mark.slow),
    ],
)
def test_a_dying_case_is_recorded_crashed_and_the_sweep_goes_on(
    tmp_path: Path, crash: str, needle: str
) -> None:
    out = tmp_path / "run"
    res = cli(
        str(scenario(tmp_path, crash)), "--out", str(out), "--quiet", "--no-plots", "--executor", "subprocess"
    )
    assert res.returncode == 3, res.stderr  # the run finished, but a case crashed: exit 3
    recs = statuses(out)
    assert len(recs) == 2 * len(LENGTHS) and len(read_run_records(out)) == len(recs)
    dead = recs[("crashy", 24)]
    assert dead["status"] == "crashed" and needle in dead["reason"], dead["reason"]
    assert "stderr_tail" in dead["info"]
    others = [r for key, r in recs.items() if key != ("crashy", 24)]
    assert all(r["status"] == "ok" for r in others)  # the rest of its group and the other variant ran
    merged = [json.loads(line) for line in (out / "records.jsonl").read_text().splitlines()]
    assert sorted(r["case_id"] for r in merged) == sorted(r["case_id"] for r in recs.values())


@pytest.mark.slow  # two more full runs; the default run covers resume after a crash inline
def test_resume_skips_a_crashed_case_unless_asked_to_retry_it(tmp_path: Path) -> None:
    out = tmp_path / "run"
    path = str(scenario(tmp_path, "segv"))
    assert cli(path, "--out", str(out), "--quiet", "--no-plots").returncode == 3
    # resume does not run the crashed case again...
    again = cli(path, "--out", str(out), "--resume", "--quiet", "--no-plots")
    assert again.returncode == 3 and "0 cases run" in again.stdout, again.stdout + again.stderr
    # ...unless asked to
    retry = cli(path, "--out", str(out), "--resume", "--retry-crashed", "--quiet")
    assert retry.returncode == 3 and "1 cases run (1 crashed)" in retry.stdout, retry.stdout + retry.stderr


def test_a_case_that_swallows_the_timeout_is_killed_and_recorded(tmp_path: Path) -> None:
    out = tmp_path / "run"
    start = time.monotonic()
    res = cli(str(scenario(tmp_path, "swallow")), "--out", str(out), "--quiet", "--no-plots")
    elapsed = time.monotonic() - start
    assert res.returncode == 0, res.stderr
    hung = statuses(out)[("crashy", 24)]
    assert hung["status"] == "timeout" and "killed" in hung["reason"]
    assert statuses(out)[("crashy", 32)]["status"] == "ok"
    assert elapsed < 3 + 10 + 60  # the timeout (3 s) + 10 s, plus the run's own work and start-ups


def test_inline_crash_is_recorded_on_resume_not_run_again(tmp_path: Path) -> None:
    out = tmp_path / "run"
    path = scenario(tmp_path, "kill")
    res = cli(str(path), "--out", str(out), "--quiet", "--no-plots", "--executor", "inline")
    assert res.returncode == -9  # inline: the case took the whole run with it
    again = cli(str(path), "--out", str(out), "--resume", "--quiet", "--no-plots", "--executor", "inline")
    assert again.returncode == 3, again.stderr  # the run holds a crashed case
    recs = statuses(out)
    assert recs[("crashy", 24)]["status"] == "crashed" and "--retry-crashed" in recs[("crashy", 24)]["reason"]
    assert len(recs) == 2 * len(LENGTHS)


def test_two_runs_into_one_out_never_record_a_case_twice(tmp_path: Path) -> None:
    out = tmp_path / "run"
    path = scenario(tmp_path, "none")
    env = {**os.environ, "PYTHONPATH": f"{PLUGINS}{os.pathsep}{ROOT}"}
    cmd = [sys.executable, str(ROOT / "run_bench.py"), str(path), "--out", str(out), "--quiet", "--no-plots"]
    procs = [subprocess.Popen(cmd, cwd=ROOT, env=env, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    results = [(p.wait(timeout=240), p.stderr.read()) for p in procs]
    codes = sorted(code for code, _ in results)
    assert codes == [0, 2], results
    refused = next(err for code, err in results if code == 2)
    assert "another run is writing here (pid" in refused or "already holds records" in refused
    ids = [
        r["case_id"]
        for path in out.glob("records.*.jsonl")
        for r in map(json.loads, path.read_text().splitlines())
    ]
    assert len(ids) == len(set(ids)) == 2 * len(LENGTHS)


def test_resume_with_an_edited_scenario_names_what_changed(tmp_path: Path, crashy_inline) -> None:
    out = tmp_path / "run"
    path = scenario(tmp_path, "none")
    inline = ("--quiet", "--no-plots", "--executor", "inline")
    assert crashy_inline(str(path), "--out", str(out), *inline)[0] == 0
    path.write_text(path.read_text().replace("at: 24", "at: 32").replace("rows: 8", "rows: 9"))
    code, err = crashy_inline(str(path), "--out", str(out), "--resume", "--quiet")
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "the scenario changed since this run was planned (accuracy.rows, variants[0].params.at[0])" in err


def test_a_stale_lock_is_taken_over_by_resume_only(tmp_path: Path, crashy_inline) -> None:
    out = tmp_path / "run"
    path = scenario(tmp_path, "none")
    inline = ("--quiet", "--no-plots", "--executor", "inline")
    assert crashy_inline(str(path), "--out", str(out), *inline)[0] == 0
    dead = subprocess.run(["sh", "-c", "echo $$"], capture_output=True, text=True)  # a pid now unused
    lock = {"pid": int(dead.stdout), "host": os.uname().nodename, "since": "2026-01-01T00:00:00+00:00"}
    (out / "writer.lock").write_text(json.dumps(lock))
    code, err = crashy_inline(str(path), "--out", str(out), "--quiet", "--executor", "inline")
    assert code == 2 and "continue it with --resume" in err
    assert crashy_inline(str(path), "--out", str(out), "--resume", *inline)[0] == 0
    assert not (out / "writer.lock").exists()


@pytest.mark.slow  # two submitit jobs and an inline run, each starting torch: ~20 s
def test_submitit_local_with_two_workers_gives_the_same_cases_as_inline(tmp_path: Path) -> None:
    pytest.importorskip("submitit")
    path = scenario(tmp_path, "none")
    ids, errors = {}, {}
    for executor in ("inline", "submitit-local"):
        out = tmp_path / executor
        res = cli(
            str(path), "--out", str(out), "--quiet", "--no-plots", "--executor", executor, "--workers", "2"
        )
        assert res.returncode == 0, res.stderr
        recs = read_run_records(out)
        assert all(r["status"] == "ok" for r in recs)
        ids[executor] = sorted(r["case_id"] for r in recs)
        errors[executor] = {r["case_id"]: r["rel_err"] for r in recs}
    assert ids["inline"] == ids["submitit-local"] and len(ids["inline"]) == 2 * len(LENGTHS)
    assert errors["inline"] == errors["submitit-local"]  # two workers on 2 cores: the same records
    assert {r["worker"] for r in read_run_records(tmp_path / "submitit-local")} == {"job0", "job1"}


def test_gpus_executor_pins_one_worker_per_device_and_never_overlaps_on_one(tmp_path: Path) -> None:
    """No GPU needed: a fake device list; each child is pinned through CUDA_VISIBLE_DEVICES."""
    out = tmp_path / "run"
    path = scenario(tmp_path, "none")
    res = cli(str(path), "--out", str(out), "--quiet", "--no-plots", "--executor", "gpus", "--gpus", "0,1")
    assert res.returncode == 0, res.stderr
    recs = read_run_records(out)
    assert {r["visible_devices"] for r in recs} == {"0", "1"}
    assert all(r["worker"] == f"gpu{r['visible_devices']}" for r in recs)
    for device in ("0", "1"):
        spans = sorted(
            (datetime.fromisoformat(r["started_at"]).timestamp(), r["wall_s"])
            for r in recs
            if r["visible_devices"] == device
        )
        assert all(start + wall <= nxt for (start, wall), (nxt, _) in zip(spans, spans[1:], strict=False))


def test_bad_input_starts_no_warm_child(tmp_path: Path, monkeypatch, capsys) -> None:
    """Warm children start only once the scenario and the options are valid (issue 24: a missing
    scenario with --workers 16 started 16 interpreters before saying so); import registers no hook."""
    from harness.cli import main
    from harness.execute import warm

    started: list[object] = []
    monkeypatch.setattr(warm, "spawn", lambda *a, **k: started.append(a))
    assert main([str(tmp_path / "missing.yaml"), "--workers", "16", "--out", str(tmp_path / "r")]) == 2
    assert "missing.yaml" in capsys.readouterr().err
    path = tmp_path / "ok.yaml"
    path.write_text(scenario(tmp_path, "none").read_text().replace(CRASHY, ""))
    assert main([str(path), "--workers", "100000", "--out", str(tmp_path / "r"), "--quiet"]) == 2
    assert "--workers 100000: expected 1 to" in capsys.readouterr().err
    assert started == [] and not (tmp_path / "r").exists()


def fake_slurm(folder: Path) -> str:
    """A PATH where sbatch and squeue exist but sinfo finds no controller (as on a machine with
    Slurm's client packages and no cluster configured)."""
    folder.mkdir()
    for name in ("sbatch", "squeue", "srun"):
        (folder / name).write_text("#!/bin/sh\nexit 0\n")
    (folder / "sinfo").write_text(
        "#!/bin/sh\necho 'slurm_load_partitions: Unable to contact slurm controller (connect failure)' >&2\n"
        "exit 1\n"
    )
    for tool in folder.iterdir():
        tool.chmod(0o755)
    return f"{folder}{os.pathsep}{os.environ.get('PATH', '')}"


@pytest.mark.parametrize(
    "args,needle,path",
    [
        (["--executor", "gpus"], "--executor gpus: no CUDA device is visible here", None),
        (["--executor", "slurm"], "--executor slurm: no Slurm here", "empty"),
        (
            ["--executor", "slurm"],
            "--executor slurm: no Slurm controller answers here (`sinfo` failed: slurm_load_partitions: "
            "Unable to contact slurm controller (connect failure))",
            "fake",
        ),
        (
            ["--partition", "gpu\n#SBATCH --wrap=x"],
            "--partition: 'gpu\\n#SBATCH --wrap=x' cannot go into",
            None,
        ),
        (["--slurm-param", "account=$(id)"], "--slurm-param 'account=$(id)': '$(id)' cannot go", None),
        (["--workers", "0"], "--workers: expected an int >= 1, found 0", None),
        (["--gpus", "a,b"], "--gpus: expected GPU ids like 0,1", None),
        (["--retry-crashed"], "--retry-crashed needs --resume", None),
    ],
)
def test_executor_options_that_cannot_work_fail_before_anything_is_written(
    tmp_path: Path, args: list[str], needle: str, path: str | None, monkeypatch, capsys
) -> None:
    """In-process (harness.cli.main): the options are checked before any child starts."""
    from harness.cli import main

    if args == ["--executor", "gpus"] and torch.cuda.is_available():
        pytest.skip("a GPU is visible here")
    if path == "empty":
        (tmp_path / "bin").mkdir()
        path = str(tmp_path / "bin")
    elif path == "fake":
        path = fake_slurm(tmp_path / "bin")
    if path is not None:
        monkeypatch.setenv("PATH", path)
    out = tmp_path / "run"
    softmax_only = scenario(tmp_path, "none").read_text().replace(CRASHY, "")  # crashy is not installed here
    (tmp_path / "s.yaml").write_text(softmax_only)
    capsys.readouterr()
    assert main([str(tmp_path / "s.yaml"), "--out", str(out), *args]) == 2
    err = capsys.readouterr().err
    assert err.strip().startswith("error: " + needle) and len(err.strip().splitlines()) == 1, err
    assert not out.exists()


def run_processes(out: Path) -> list[str]:
    """Command lines of live processes that name the run directory (submitit jobs do)."""
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            text = cmdline.read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if str(out) in text:
            found.append(text)
    return found


@pytest.mark.slow  # two submitit jobs started, killed and resumed: ~30 s
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_killing_a_submitit_local_run_leaves_nothing_running_and_resume_records_each_case_once(
    tmp_path: Path,
) -> None:
    pytest.importorskip("submitit")
    from harness.execute.rundir import _earlier_writers_alive

    path = tmp_path / "slow.yaml"
    path.write_text(
        f"""name: kill-test
device: cpu
problem: {{batch: 1, heads: 2, head_dim: 8, seq_len: {LENGTHS}, mode: fwd}}
variants:
  - name: crashy
    params: {{sleep_s: [0.5, 1.0]}}
accuracy: {{rows: 8}}
checks: {{causality: false, batch_independence: false}}
measure: {{warmup_ms: 0, min_samples: 1, rep_ms: 0, memory: false, timeout_s: 60}}
"""
    )
    out = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": f"{PLUGINS}{os.pathsep}{ROOT}"}
    cmd = [sys.executable, str(ROOT / "run_bench.py"), str(path), "--out", str(out), "--quiet", "--no-plots"]
    cmd += ["--executor", "submitit-local", "--workers", "2"]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stderr=subprocess.PIPE, text=True)
    started = out / "started.job0.jsonl"
    deadline = time.monotonic() + 120
    while not (started.exists() and started.read_text().strip()):
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.2)
    os.kill(proc.pid, 9)  # the parent only: its jobs and their workers must follow it
    proc.wait()
    deadline = time.monotonic() + 20
    while (_earlier_writers_alive(out) or run_processes(out)) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not run_processes(out) and not _earlier_writers_alive(out)
    res = cli(str(path), "--out", str(out), "--resume", "--quiet", "--executor", "submitit-local")
    assert res.returncode == 0, res.stderr
    ids = [
        r["case_id"] for p in out.glob("records.*.jsonl") for r in map(json.loads, p.read_text().splitlines())
    ]
    assert len(ids) == len(set(ids)) == 2 * len(LENGTHS)
