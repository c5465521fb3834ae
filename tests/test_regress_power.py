"""benchmarks/regress_power.py: the slowdown it plants is real work in code (a plugin variant that
computes linear attention REPEAT times), and (slow) a small version of the whole protocol runs."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "benchmarks"))

import regress_power  # noqa: E402


@pytest.mark.parametrize("repeat", [4, 5])
def test_the_planted_variant_repeats_real_linear_attention(tmp_path: Path, monkeypatch, repeat: int) -> None:
    from attentions.linear.variant import LinearAttention

    root = regress_power.write_revision(tmp_path / "rev", repeat)
    entry = (root / f"{regress_power.PLANT}-0.1.dist-info" / "entry_points.txt").read_text()
    assert "[attnbench.variants]" in entry and "PlantedLinear" in entry
    spec = importlib.util.spec_from_file_location(
        "planted_variant", root / regress_power.PLANT / "variant.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    calls = []
    real = LinearAttention.forward
    monkeypatch.setattr(
        LinearAttention, "forward", lambda self, *a, **k: calls.append(1) or real(self, *a, **k)
    )
    q, k, v = torch.randn(3, 1, 2, 37, 16).unbind(0)
    from attentions.linear.variant import LinearParams

    planted, linear = (cls(LinearParams(), "torch", 2, 16) for cls in (module.PlantedLinear, LinearAttention))
    out = planted.forward(q, k, v, False)
    assert len(calls) == repeat  # the work, repeated
    assert torch.allclose(out, real(linear, q, k, v, False))  # the same result: only slower


@pytest.mark.slow
@pytest.mark.timeout(1500)  # about 24 runs of 10 cases, each >= 400 ms of samples: minutes, not seconds
def test_a_small_power_run_reports_every_figure(tmp_path: Path) -> None:
    cmd = [sys.executable, "benchmarks/regress_power.py", "--executor", "inline", "--tries", "1", "--aa", "1"]
    cmd += ["--ab-tries", "1"]
    cmd += ["--ab-aa", "1", "--min-rounds", "2", "--max-rounds", "2", "--history-runs", "6"]
    cmd += ["--history-after", "1", "--out", str(tmp_path)]
    res = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=1800)
    assert res.returncode == 0, res.stderr[-3000:]
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["compare"]["tries"] == {"1.5": 1, "2.0": 1} and summary["compare"]["aa_pairs"] == 1
    assert summary["ab"]["tries"] == {"1.5": 1, "2.0": 1, "aa": 1}
    assert all(t["rounds"] == 2 for ts in summary["ab"]["trials"].values() for t in ts)
    assert summary["history"]["unplanted"]["runs"] == 6 and len(summary["history"]["checks_after_step"]) == 1
    assert summary["load_1min"]["max"] >= summary["load_1min"]["min"] > 0
    base = {
        json.loads(x)["case_id"]
        for x in (tmp_path / "serial0-base" / "records.jsonl").read_text().splitlines()
    }
    head = {
        json.loads(x)["case_id"]
        for x in (tmp_path / "serial0-2.0" / "records.jsonl").read_text().splitlines()
    }
    assert base == head and len(base) == 10  # the same cases: only the plugin's code differs


def test_the_pool_pairs_runs_taken_back_to_back(tmp_path: Path) -> None:
    """regress_power_pool pairs each slowed run with the base run beside it, each ab round's two
    runs, and consecutive base runs (A/A); an incomplete run is left out."""
    import regress_power_pool as pool

    def run(path: Path, done: bool = True) -> Path:
        path.mkdir(parents=True)
        (path / "records.jsonl").write_text("")
        if done:
            (path / "report.md").write_text("")
        return path

    cmp, ab = tmp_path / "cmp", tmp_path / "ab"
    s0b, s0h, s1b = run(cmp / "serial0-base"), run(cmp / "serial0-1.5"), run(cmp / "serial1-base")
    run(cmp / "serial1-2.0", done=False)
    r0 = (run(ab / "ab-aa-0" / "base-round0"), run(ab / "ab-aa-0" / "head-round0"))
    run(ab / "ab-2.0-0" / "base-round0")  # its head round never finished
    found = pool.pairs([cmp, ab])
    assert found == {"1.5": [(s0b, s0h)], "2.0": [], "aa": [(s0b, s1b), r0]}
