"""A benchmark kind from an outside package runs end to end without editing a file of the project.

The test writes a tiny installed-looking package into tmp_path: a kind `toy` with its own metric
(`toy_score`, gated: higher is better, 0.01 absolute), its own progress line and report section,
and a `*.dist-info` directory whose `entry_points.txt` declares it in the group `attnbench.kinds`.
With PYTHONPATH=tmp_path the CLI sees it as if it were pip-installed: it runs, its section appears
in report.md, `compare` gates its metric, `export` carries its column, and a report written
without the package still shows the metric. No file under the repository changes.
"""

from __future__ import annotations

import csv
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

KIND = '''
"""toy: a benchmark kind that scores each case with a number read from the environment."""

from __future__ import annotations

import os
from typing import ClassVar

from harness.plugins.kinds import BenchmarkKind
from harness.plugins.metrics import Gate, Metric

SCORE = Metric("toy_score", "1", "higher", "the toy's score of a case", "task", measured_by="toy",
               title="toy score", decimals=3, gate=Gate(abs=0.01))


class ToyKind(BenchmarkKind):
    name: ClassVar[str] = "toy"
    description: ClassVar[str] = "scores each case with TOY_SCALE * seq_len / 1000"
    metrics: ClassVar[tuple] = (SCORE,)
    headline: ClassVar[tuple] = ("toy_score",)

    def measure(self, case, record, ctx):
        record.set("toy_score", float(os.environ["TOY_SCALE"]) * case.problem.seq_len / 1000)

    def report_section(self, df, scenario, plot_files):
        return ["## Toy section", "", f"mean toy score {df['toy_score'].mean():.4f}"]
'''

SCENARIO = """
name: toy_run
version: 1
kind: toy
device: cpu
problem: {batch: 1, heads: 1, head_dim: 8, seq_len: [100, 200]}
variants:
  - name: softmax
"""


def _install(tmp: Path) -> Path:
    pkg = tmp / "site"
    (pkg / "toykind").mkdir(parents=True)
    (pkg / "toykind" / "__init__.py").write_text(textwrap.dedent(KIND))
    info = pkg / "toykind-0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: toykind\nVersion: 0\n")
    (info / "entry_points.txt").write_text("[attnbench.kinds]\ntoy = toykind:ToyKind\n")
    return pkg


def _cli(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "run_bench.py", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=240
    )


@pytest.mark.slow
def test_outside_kind_runs_reports_compares_and_exports(tmp_path: Path) -> None:
    before = subprocess.run(["git", "status", "--porcelain"], cwd=ROOT, capture_output=True, text=True).stdout
    site = _install(tmp_path)
    scenario = tmp_path / "toy.yaml"
    scenario.write_text(SCENARIO)
    env = {**os.environ, "PYTHONPATH": str(site), "TOY_SCALE": "1.0"}
    base, head = tmp_path / "base", tmp_path / "head"
    run = _cli([str(scenario), "--out", str(base), "--executor", "inline"], env)
    assert run.returncode == 0, run.stderr
    assert "toy_score" in run.stdout  # the end-of-run table shows its headline metric
    report = (base / "report.md").read_text()
    assert "## Toy section" in report and "mean toy score 0.1500" in report
    run = _cli([str(scenario), "--out", str(head), "--executor", "inline"], {**env, "TOY_SCALE": "0.5"})
    assert run.returncode == 0, run.stderr

    verdict = _cli(["compare", str(base), str(head), "--no-time-gate"], env)
    assert verdict.returncode == 1, verdict.stdout + verdict.stderr  # a confirmed regression
    assert "toy_score" in verdict.stdout and "REGRESSED" in verdict.stdout

    out = tmp_path / "toy.csv"
    exported = _cli(["export", str(base), "--format", "csv", "--out", str(out)], env)
    assert exported.returncode == 0, exported.stderr
    rows = list(csv.DictReader(out.open()))
    assert [float(r["toy_score"]) for r in rows] == [0.1, 0.2]
    assert all(r["kind"] == "toy" for r in rows)
    assert all(any(r[c] for r in rows) for c in rows[0])  # no column empty in every row

    bare = {k: v for k, v in env.items() if k != "PYTHONPATH"}  # a checkout without the package
    rewritten = _cli(["report", str(base), "--no-plots"], bare)
    assert rewritten.returncode == 0, rewritten.stderr
    report = (base / "report.md").read_text()
    assert "## Kind `toy`" in report and "toy_score" in report and "0.2" in report

    after = subprocess.run(["git", "status", "--porcelain"], cwd=ROOT, capture_output=True, text=True).stdout
    assert after == before  # nothing of the project was edited or written
