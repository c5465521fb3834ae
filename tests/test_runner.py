"""Runner statuses (planted OOM, NaN, error, timeout, leak), the OOM rule, resume after SIGKILL."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from harness.config.scenario import load_scenario
from harness.execute.progress import QuietReporter
from harness.execute.rundir import RunDirError
from harness.execute.runner import run_scenario
from harness.plugins.contract import AttentionVariant, Capabilities, Problem
from harness.plugins.variants import VARIANTS
from harness.results.record_lines import read_records
from harness.results.run_records import read_run_records

ROOT = Path(__file__).resolve().parent.parent


def exact(q, k, v, causal):
    return torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=causal)


@dataclass(frozen=True)
class PlantParams:
    oom_from: int = 10**9  # raise OOM at seq_len >= this
    nan_from: int = 10**9
    error_from: int = 10**9
    sleep_s: float = 0.0
    leak: bool = False


class PlantedVariant(AttentionVariant):
    """Exact attention that misbehaves on demand."""

    name = "planted"
    Params = PlantParams
    impls = ("torch",)
    capabilities = Capabilities(exact=True)
    calls = 0

    def forward(self, q, k, v, causal):
        n = q.shape[-2]
        p = self.params
        if n >= p.oom_from:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 64.00 GiB (planted)")
        if n >= p.error_from:
            raise ValueError("planted failure")
        if p.sleep_s:
            time.sleep(p.sleep_s)
        out = exact(q, k, v, causal)
        if n >= p.nan_from:
            out = out.clone()
            out[..., 0, 0] = float("nan")
        if p.leak:
            out = out + v.mean(dim=-2, keepdim=True)
        return out

    @classmethod
    def flop_terms(cls, problem: Problem, params, impl: str) -> dict[str, float]:
        return {"scores_matmul": 4.0 * problem.batch * problem.heads * problem.seq_len**2 * problem.head_dim}


@pytest.fixture
def planted():
    VARIANTS.register("planted", PlantedVariant)
    yield
    VARIANTS.unregister("planted")


def write_scenario(tmp_path: Path, variants: str, seq_len="[16, 32, 64]", causal="[false]", extra="") -> Path:
    path = tmp_path / "s.yaml"
    path.write_text(
        f"""name: test
device: cpu
problem: {{batch: 2, heads: 2, head_dim: 8, seq_len: {seq_len}, causal: {causal}, mode: [fwd]}}
variants:
{variants}
accuracy: {{rows: 16}}
measure: {{warmup_ms: 0, min_samples: 2, rep_ms: 0, memory: false, timeout_s: 30}}
{extra}
"""
    )
    return path


def run(path: Path, out: Path, **kw):
    """In process (`inline`): the planted variants live in this test process only."""
    kw.setdefault("executor", "inline")
    return run_scenario(load_scenario(str(path)), out, "cpu", reporter=QuietReporter(), **kw)


def by_len(out: Path) -> dict[int, dict]:
    return {r["seq_len"]: r for r in read_records(out / "records.jsonl")}


def test_ok_records_have_every_field(planted, tmp_path):
    path = write_scenario(tmp_path, "  - name: planted")
    run(path, tmp_path / "run")
    recs = read_records(tmp_path / "run" / "records.jsonl")
    assert [r["status"] for r in recs] == ["ok"] * 3
    r = recs[0]
    assert r["rel_err"] < 1e-5 and r["skill"] > 0.99
    assert len(r["time_ms_samples"]) >= 2 and r["time_ms_median"] > 0
    assert r["flops"] > 0 and r["tflops"] > 0
    assert r["repro"].startswith("python run_bench.py") and r["case_id"] in r["repro"]
    assert (tmp_path / "run" / "env.json").exists() and (tmp_path / "run" / "records.parquet").exists()


def test_planted_oom_skips_longer_lengths(planted, tmp_path):
    path = write_scenario(tmp_path, "  - name: planted\n    params: {oom_from: 32}")
    summary = run(path, tmp_path / "run")
    recs = by_len(tmp_path / "run")
    assert recs[16]["status"] == "ok"
    assert recs[32]["status"] == "oom" and "out of memory" in recs[32]["reason"]
    assert recs[64]["status"] == "skipped" and "ran out of memory at seq_len 32" in recs[64]["reason"]
    assert summary.statuses == {"ok": 1, "oom": 1, "skipped": 1}


def test_planted_nan_and_error_do_not_stop_the_sweep(planted, tmp_path):
    entries = "  - name: planted\n    params: {nan_from: 32}\n  - name: planted\n    params: {error_from: 64}"
    path = write_scenario(tmp_path, entries)
    run(path, tmp_path / "run")
    recs = read_records(tmp_path / "run" / "records.jsonl")
    nan = {r["seq_len"]: r for r in recs if r["params"]["nan_from"] == 32}
    err = {r["seq_len"]: r for r in recs if r["params"]["error_from"] == 64}
    assert nan[16]["status"] == "ok" and nan[32]["status"] == "nan" and "non-finite" in nan[32]["reason"]
    assert err[32]["status"] == "ok" and err[64]["status"] == "error"
    assert "ValueError: planted failure" in err[64]["reason"]


def test_timeout_is_recorded(planted, tmp_path):
    path = write_scenario(tmp_path, "  - name: planted\n    params: {sleep_s: 0.3}", seq_len="16")
    path.write_text(path.read_text().replace("timeout_s: 30", "timeout_s: 0.5"))
    run(path, tmp_path / "run")
    (rec,) = read_records(tmp_path / "run" / "records.jsonl")
    assert rec["status"] == "timeout"


def test_leak_is_caught(planted, tmp_path):
    path = write_scenario(
        tmp_path, "  - name: planted\n    params: {leak: true}", seq_len="32", causal="[true]"
    )
    run(path, tmp_path / "run")
    (rec,) = read_records(tmp_path / "run" / "records.jsonl")
    assert rec["status"] == "leak" and rec["causality_change"] > 1e-2


def test_unsupported_case_is_skipped_with_reason(tmp_path):
    path = write_scenario(tmp_path, "  - name: flash\n    impl: xformers", seq_len="16")
    run(path, tmp_path / "run")
    (rec,) = read_records(tmp_path / "run" / "records.jsonl")
    assert rec["status"] == "skipped" and "xformers" in rec["reason"]


def test_existing_run_dir_needs_resume(planted, tmp_path):
    path = write_scenario(tmp_path, "  - name: planted", seq_len="16")
    run(path, tmp_path / "run")
    with pytest.raises(RunDirError, match="--resume"):
        run(path, tmp_path / "run")
    summary = run(path, tmp_path / "run", resume=True)
    assert summary.ran == 0 and summary.already_done == 1


@pytest.mark.slow  # ~8 CPU-s; by default test_ctrl_c_... and test_executors' SIGKILLed inline run resume
def test_resume_after_sigkill_records_each_case_once(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text(
        """name: killme
device: cpu
problem: {batch: 1, heads: 2, head_dim: 16, seq_len: [32, 64, 96, 128], causal: [false, true], mode: fwd}
variants:
  - name: softmax
  - name: linear
accuracy: {rows: 16}
measure: {warmup_ms: 0, min_samples: 3, rep_ms: 250, memory: false}
"""
    )
    out = tmp_path / "run"
    cmd = [sys.executable, str(ROOT / "run_bench.py"), str(path), "--out", str(out), "--quiet", "--no-plots"]
    proc = subprocess.Popen(cmd, cwd=ROOT, start_new_session=True)
    records = out / "records.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline:
        if len(read_run_records(out)) >= 3:  # the workers' files: records.jsonl is merged at the end
            break
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)  # the runner; its workers die with it (no orphans)
    proc.wait()
    first = read_run_records(out)
    assert 3 <= len(first) < 16, "the kill must land mid-sweep"
    done = subprocess.run([*cmd, "--resume"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    recs = read_records(records)
    ids = [r["case_id"] for r in recs]
    assert len(ids) == 16 and len(set(ids)) == 16
    assert all(r["status"] == "ok" for r in recs)
    assert len({r["run_id"] for r in recs}) == 1
    assert json.loads((out / "run.json").read_text())["run_id"] == recs[0]["run_id"]


@dataclass(frozen=True)
class CliResult:
    returncode: int
    stdout: str
    stderr: str


@pytest.fixture
def cli(monkeypatch, capsys):
    """`run-bench ARGS` in this process (harness.cli.main, from the repository root): exit code and
    output. The end-to-end runs through run_bench.py are test_ctrl_c_... and the resume tests below."""
    from harness.cli import main

    monkeypatch.chdir(ROOT)

    def run_cli(*args: str) -> CliResult:
        capsys.readouterr()
        code = main(list(args))
        out, err = capsys.readouterr()
        return CliResult(code, out, err)

    return run_cli


def test_cuda_scenario_without_gpu_fails_fast(tmp_path, cli):
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    res = cli("scenarios/long.yaml", "--out", str(tmp_path / "x"))
    assert res.returncode == 2
    assert (
        res.stderr.strip().count("\n") == 0 and "no CUDA GPU" in res.stderr and "--device cpu" in res.stderr
    )


@pytest.mark.parametrize(
    "args,needle",
    [
        (("does/not/exist.yaml",), "exist.yaml"),
        (("validate", "does/not/exist.yaml"), "exist.yaml"),
        (("scenarios/smoke.yaml", "--only", "softmx"), "did you mean 'softmax'"),
        (("report", "no_such_run"), "no_such_run"),
    ],
)
def test_bad_input_is_one_line_exit_2(args, needle, cli):
    res = cli(*args)
    assert res.returncode == 2, res.stdout + res.stderr
    assert needle in res.stderr and "Traceback" not in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1


def test_validate_and_list(cli):
    res = cli("validate", "scenarios/long.yaml")
    assert res.returncode == 0, res.stderr
    assert "valid" in res.stdout and "cases" in res.stdout
    res = cli("list")
    assert res.returncode == 0, res.stderr
    for name in ("softmax", "flash", "linear", "performer", "nystrom", "luna", "luna_nested"):
        assert f"\n{name} (" in "\n" + res.stdout


def test_fit_is_shared_by_the_modes_of_one_configuration(tmp_path):
    path = tmp_path / "fit.yaml"
    path.write_text(
        """name: fit
device: cpu
problem: {batch: 1, heads: 2, head_dim: 8, seq_len: [32, 48], causal: false, mode: [fwd, fwd_bwd]}
variants:
  - name: luna
    impl: chunked
    params: {m: 2, L: 2, hidden: 8}
    fit: {steps: 5, batches: 1, rows: 16}
accuracy: {rows: 16}
measure: {warmup_ms: 0, min_samples: 2, rep_ms: 0, memory: false}
"""
    )
    run(path, tmp_path / "run")
    recs = read_records(tmp_path / "run" / "records.jsonl")
    assert [r["status"] for r in recs] == ["ok"] * 4
    for n in (32, 48):
        fwd, both = (
            next(r for r in recs if r["seq_len"] == n and r["mode"] == m) for m in ("fwd", "fwd_bwd")
        )
        assert "fit_reused" not in fwd["info"] and both["info"]["fit_reused"] is True
        # the same fitted parameters on the same inputs: the same error, bit for bit
        assert both["rel_err"] == fwd["rel_err"] and both["unfitted_rel_err"] == fwd["unfitted_rel_err"]
        assert both["fit_loss"] == fwd["fit_loss"] and both["rel_err"] < both["unfitted_rel_err"]


class BatchCoupled(PlantedVariant):
    """Exact attention plus the batch mean of v: sample 0 depends on the other samples."""

    name = "coupled"

    def forward(self, q, k, v, causal):
        return exact(q, k, v, causal) + v.mean(dim=(0, 2), keepdim=True)


def test_batch_dependence_is_a_leak(tmp_path):
    VARIANTS.register("coupled", BatchCoupled)
    try:
        run(write_scenario(tmp_path, "  - name: coupled", seq_len="[16]"), tmp_path / "run")
    finally:
        VARIANTS.unregister("coupled")
    (rec,) = read_records(tmp_path / "run" / "records.jsonl")
    assert rec["status"] == "leak" and rec["reason"].startswith("batch leak")
    assert rec["batch_change"] > 1e-2


def test_roofline_floor_is_recorded(planted, tmp_path, monkeypatch):
    from harness.execute import runner
    from harness.measure.roofline import Roofline

    fake = Roofline(device="cpu", copy_gbps=10.0, matmul_tflops={"fp32": 0.5})
    calls = []
    monkeypatch.setattr(runner, "measure_roofline", lambda device, dtypes: calls.append(dtypes) or fake)
    path = write_scenario(tmp_path, "  - name: planted", seq_len="[16]")
    path.write_text(path.read_text().replace("timeout_s: 30}", "timeout_s: 30, roofline: true}"))
    run(path, tmp_path / "run")
    (rec,) = read_records(tmp_path / "run" / "records.jsonl")
    assert calls == [["fp32"]]
    assert json.loads((tmp_path / "run" / "roofline.json").read_text())["copy_gbps"] == 10.0
    floor = fake.floor_ms(rec.get("flops"), rec.get("bytes_moved"), "fp32")  # only measured ones written
    assert rec["floor_ms"] == pytest.approx(floor) and floor > 0
    assert rec["time_over_floor"] == pytest.approx(rec["time_ms_median"] / floor)
    assert "Measured roofline" in (tmp_path / "run" / "report.md").read_text()


def test_no_plots_flag_writes_no_pngs(planted, tmp_path, cli):
    path = write_scenario(tmp_path, "  - name: planted", seq_len="[16]")
    for flag, expect_pngs in (("--no-plots", False), (None, True)):
        out = tmp_path / f"run-{flag}"
        args = [str(path), "--out", str(out), "--quiet", "--executor", "inline", *([flag] if flag else [])]
        res = cli(*args)
        assert res.returncode == 0, res.stderr
        assert (out / "report.md").exists()
        assert bool(list(out.glob("plots/*.png"))) is expect_pngs


def test_ctrl_c_keeps_finished_cases_and_exits_130(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text(
        """name: interrupt
device: cpu
problem: {batch: 1, heads: 2, head_dim: 16, seq_len: [32,48,64,80,96,112,128,144], causal: [false, true]}
variants:
  - name: softmax
accuracy: {rows: 16}
measure: {warmup_ms: 0, min_samples: 3, rep_ms: 250, memory: false}
"""
    )
    out = tmp_path / "run"
    cmd = [sys.executable, str(ROOT / "run_bench.py"), str(path), "--out", str(out), "--quiet", "--no-plots"]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    records = out / "records.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and len(read_run_records(out)) < 2:
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    stdout, _ = proc.communicate(timeout=120)
    assert proc.returncode == 130
    kept = read_records(records)
    assert 2 <= len(kept) < 16 and all(r["status"] == "ok" for r in kept)
    assert "--resume" in stdout  # tells the user how to continue
    assert (out / "report.md").exists() and (out / "records.parquet").exists()
    done = subprocess.run([*cmd, "--resume"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert len({r["case_id"] for r in read_records(records)}) == 16
