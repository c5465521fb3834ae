"""Shipped scenarios by name from any directory, and filters that select nothing (exit 2)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from harness.cli import main
from harness.config.shipped import shipped_names

ROOT = Path(__file__).resolve().parents[1]
SCENARIO = """\
name: tiny
version: 1
device: cpu
problem: {batch: 1, heads: 1, head_dim: 16, seq_len: [64], dtype: fp32, causal: false, mode: fwd}
variants:
  - name: softmax
  - name: flash
measure: {warmup_ms: 1, min_samples: 3, rep_ms: 1, memory: false}
"""


def run_cli(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    """`python <checkout>/run_bench.py ARGS` in a fresh interpreter at `cwd`, with no PYTHONPATH: the
    parent finds `harness` next to the script, its child workers through `execute.warm.CODE_ROOT`."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return subprocess.run(
        [sys.executable, str(ROOT / "run_bench.py"), *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )


def test_child_workers_import_the_parents_harness(monkeypatch: pytest.MonkeyPatch) -> None:
    from harness.execute.warm import CODE_ROOT, _child_env

    monkeypatch.setenv("PYTHONPATH", "/elsewhere")
    assert CODE_ROOT == str(ROOT)
    child = _child_env({"CUDA_VISIBLE_DEVICES": "1"})
    assert child["PYTHONPATH"] == os.pathsep.join([str(ROOT), "/elsewhere"])


def test_shipped_names_are_the_scenarios_folder() -> None:
    names = shipped_names()
    assert "quick" in names and "smoke" in names
    assert names == sorted(p.stem for p in (ROOT / "scenarios").glob("*.yaml"))


@pytest.mark.parametrize("arg", ["quick", "quick.yaml", "scenarios/quick.yaml"])
def test_validate_a_shipped_scenario_by_name(arg: str, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    os.chdir(tmp_path)  # _keep_cwd restores the working directory
    assert main(["validate", arg]) == 0
    assert "valid;" in capsys.readouterr().out


@pytest.fixture(autouse=True)
def _keep_cwd(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(Path.cwd())  # restores the working directory after each test


def test_unknown_scenario_name_lists_the_shipped_ones(capsys: pytest.CaptureFixture) -> None:
    assert main(["validate", "quik"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "did you mean 'quick'" in err[0] and "smoke" in err[0], err


def test_validate_quick_by_name_in_a_fresh_process_elsewhere(tmp_path: Path) -> None:
    proc = run_cli(["validate", "quick"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.startswith("quick: valid;")


@pytest.mark.slow  # a real run in a fresh process: 10-50 s on a shared 2-core machine
def test_run_quick_from_another_directory(tmp_path: Path) -> None:
    """`run-bench quick --case ID` from a directory that is not the checkout: the shipped scenario is
    found and the run directory is made under ./runs of that directory."""
    listing = run_cli(["validate", "quick", "--cases"], tmp_path)
    assert listing.returncode == 0, listing.stderr
    case_id = next(
        line.split()[0] for line in listing.stdout.splitlines() if "softmax N=512" in line and " fwd " in line
    )
    proc = run_cli(["quick", "--case", case_id, "--no-plots"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    records = list((tmp_path / "runs").glob("quick-*/records.jsonl"))
    assert len(records) == 1 and len(records[0].read_text().splitlines()) == 1
    assert "1 cases run (1 ok)" in proc.stdout


def test_only_a_variant_the_scenario_lacks_is_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    (tmp_path / "tiny.yaml").write_text(SCENARIO)
    assert main([str(tmp_path / "tiny.yaml"), "--only", "linear", "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "its variants: softmax, flash" in err[0], err
    assert not (tmp_path / "r").exists()


def test_case_id_that_matches_nothing_is_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    (tmp_path / "tiny.yaml").write_text(SCENARIO)
    assert main(["validate", str(tmp_path / "tiny.yaml"), "--cases"]) == 0
    ids = [line.split()[0] for line in capsys.readouterr().out.splitlines()[1:] if line.startswith("  ")]
    assert len(ids) == 2
    assert main([str(tmp_path / "tiny.yaml"), "--case", "0123456789ab", "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--case 0123456789ab" in err[0] and ids[0] in err[0] and "--cases" in err[0]
    assert not (tmp_path / "r").exists()
