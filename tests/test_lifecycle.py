"""The harness owns the case lifecycle, the same for every kind (harness/execute/lifecycle.py):
the hard timeout (also inline), `--raise`, `error_trace`, the OOM rule, non-finite results as `nan`.

Each kind's measurement is replaced by a failing stand-in (monkeypatch), so these tests check the
lifecycle, not the kinds' own work; they run in process in well under a second each.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from harness.config.scenario import load_scenario
from harness.config.sweep import expand
from harness.execute.lifecycle import run_case
from harness.plugins.kinds import KINDS

SCENARIOS = {
    "mqar": """
name: lc-mqar
kind: mqar
task: {vocab: 32, pairs: 2, layers: 1, train_steps: 2, eval_examples: 8}
problem: {batch: 2, heads: 1, head_dim: 8, seq_len: [16, 32], causal: true, mode: fwd_bwd}
measure: {roofline: false, memory: false, timeout_s: 0.3}
variants: [{name: softmax}]
""",
    "e2e": """
name: lc-e2e
kind: e2e
inputs: {dist: captured}
problem: {batch: 2, heads: 12, head_dim: 32, seq_len: 64}
measure: {roofline: false, memory: false, timeout_s: 0.3}
variants: [{name: softmax}]
""",
    "kernel": """
name: lc-kernel
problem: {batch: 1, heads: 1, head_dim: 8, seq_len: [16, 32]}
measure: {roofline: false, memory: false, timeout_s: 0.3}
variants: [{name: softmax}]
""",
}
MEASURED = {  # where each kind's work starts: replaced by the failing stand-in
    "mqar": "harness.kinds.mqar.kind._train",
    "e2e": "harness.kinds.e2e.kind._execute",
    "kernel": "harness.kinds.kernel.steps.measure_case",
}


class Ctx:
    host, worker, env_id, run_id, git_sha, scenario_arg = "h", "main", "", "r", "", "x.yaml"
    device_name = device_uuid = visible_devices = ""
    roofline = None

    def __init__(self, scenario, raise_errors: bool = False) -> None:
        self.scenario, self.raise_errors, self.kind_cache = scenario, raise_errors, {}


def _cases(tmp_path: Path, kind: str, timeout_s: float = 0.3):
    path = tmp_path / f"{kind}.yaml"
    path.write_text(SCENARIOS[kind].replace("timeout_s: 0.3", f"timeout_s: {timeout_s}"))
    scenario = load_scenario(str(path))
    return expand(scenario, "cpu"), scenario


def _skip_without_quality(kind: str) -> None:
    if kind == "e2e":
        pytest.importorskip("transformers", reason="e2e needs the quality extra")


@pytest.mark.parametrize("kind", list(SCENARIOS))
def test_failures_are_statuses_with_traces_and_the_oom_rule(tmp_path: Path, monkeypatch, kind: str) -> None:
    _skip_without_quality(kind)
    cases, scenario = _cases(tmp_path, kind)
    short = cases[0]
    runner = KINDS.get(kind)()

    def fail(*args, **kwargs):
        raise RuntimeError("boom in the kind")

    monkeypatch.setattr(MEASURED[kind], fail)
    rec = run_case(runner, short, Ctx(scenario), {})
    assert rec.kind == kind and rec.status == "error" and "boom in the kind" in rec.reason
    assert "fail" in rec.error_trace  # the traceback tail names where it failed

    def oom(*args, **kwargs):
        raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(MEASURED[kind], oom)
    oom_at: dict[str, int] = {}
    first = run_case(runner, short, Ctx(scenario), oom_at)
    assert first.status == "oom" and oom_at == {short.config_key: short.problem.seq_len}
    for longer in cases[1:]:  # e2e: the captured source fixes one length
        second = run_case(runner, longer, Ctx(scenario), oom_at)
        assert second.status == "skipped" and "ran out of memory at seq_len 16" in second.reason

    with pytest.raises(RuntimeError, match="out of memory"):  # --raise: the first failure propagates
        run_case(runner, short, Ctx(scenario, raise_errors=True), {})


@pytest.mark.parametrize("kind", list(SCENARIOS))
def test_the_hard_timeout_holds_inline(tmp_path: Path, monkeypatch, kind: str) -> None:
    _skip_without_quality(kind)
    cases, scenario = _cases(tmp_path, kind)
    short = cases[0]

    def hang(*args, **kwargs):
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:  # Python code: the alarm interrupts it
            pass

    monkeypatch.setattr(MEASURED[kind], hang)
    start = time.monotonic()
    rec = run_case(KINDS.get(kind)(), short, Ctx(scenario), {})
    assert rec.status == "timeout" and "0.3 s limit" in rec.reason
    assert time.monotonic() - start < 3


def test_a_non_finite_result_is_nan_never_ok(tmp_path: Path, monkeypatch) -> None:
    """MQAR: a model whose logits are NaN at evaluation ends `nan`, not `ok` with accuracy 0."""
    cases, scenario = _cases(tmp_path, "mqar", timeout_s=120)
    short = cases[0]
    monkeypatch.setattr("harness.kinds.mqar.train.evaluate", lambda *a, **k: float("nan"))
    rec = run_case(KINDS.get("mqar")(), short, Ctx(scenario), {})
    assert rec.status == "nan" and "mqar_accuracy=nan" in rec.reason
