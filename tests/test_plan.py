"""Planning and executors: groups share a fit and the OOM rule; executors and kinds are plugins."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from harness.cli import main
from harness.config.scenario import load_scenario
from harness.config.sweep import expand
from harness.execute.executors import EXECUTORS, Executor, InlineExecutor
from harness.execute.plan import group_key, plan
from harness.execute.progress import QuietReporter
from harness.execute.runner import run_scenario
from harness.plugins.kinds import KINDS
from harness.results.record_lines import read_records

ROOT = Path(__file__).resolve().parents[1]


def test_groups_partition_the_sweep_and_share_everything_but_length_and_mode() -> None:
    scenario = load_scenario(str(ROOT / "scenarios" / "quick.yaml"))
    cases, groups = plan(scenario, "cpu")
    assert [c.case_id for c in cases] == [c.case_id for c in expand(scenario, "cpu")]
    planned = [c.case_id for g in groups for c in g.cases]
    assert sorted(planned) == sorted(c.case_id for c in cases) and len(set(planned)) == len(planned)
    for group in groups:
        assert {group_key(c) for c in group.cases} == {group.key}
        by_mode: dict[str, list[int]] = {}
        for case in group.cases:
            by_mode.setdefault(case.problem.mode, []).append(case.problem.seq_len)
        assert all(lengths == sorted(lengths) for lengths in by_mode.values())
    assert len(groups) < len(cases)


def test_done_cases_are_not_planned_again() -> None:
    scenario = load_scenario(str(ROOT / "scenarios" / "quick.yaml"))
    cases, _ = plan(scenario, "cpu")
    done = {c.case_id for c in cases[::2]}
    _, groups = plan(scenario, "cpu", done=done)
    assert {c.case_id for g in groups for c in g.cases} == {c.case_id for c in cases} - done


class ReversedExecutor(Executor):
    """Runs groups last to first: the records must not depend on the order groups run in."""

    name = "reversed"

    def execute(self, run) -> None:
        InlineExecutor().execute(dataclasses.replace(run, groups=list(reversed(run.groups))))


@pytest.fixture
def reversed_executor():
    EXECUTORS.register("reversed", ReversedExecutor)
    yield
    EXECUTORS.unregister("reversed")


def _scenario(tmp_path: Path, extra: str = "") -> Path:
    path = tmp_path / "s.yaml"
    path.write_text(
        "name: plan-test\ndevice: cpu\n"
        "problem: {batch: 1, heads: 2, head_dim: 8, seq_len: [16, 32], causal: [false, true]}\n"
        "variants:\n  - name: softmax\n  - name: linear\n"
        "accuracy: {rows: 8}\n"
        "measure: {warmup_ms: 0, min_samples: 2, rep_ms: 0, memory: false}\n" + extra
    )
    return path


def test_a_registered_executor_runs_the_same_cases(tmp_path: Path, reversed_executor: None) -> None:
    scenario = load_scenario(str(_scenario(tmp_path)))
    for name in ("inline", "reversed"):
        run_scenario(scenario, tmp_path / name, "cpu", reporter=QuietReporter(), plots=False, executor=name)
    inline, other = (read_records(tmp_path / n / "records.jsonl") for n in ("inline", "reversed"))
    assert sorted(r["case_id"] for r in inline) == sorted(r["case_id"] for r in other)
    assert [r["case_id"] for r in inline] != [r["case_id"] for r in other]  # it really ran reversed
    errs = {r["case_id"]: r["rel_err"] for r in inline}
    assert all(r["status"] == "ok" and r["rel_err"] == errs[r["case_id"]] for r in other)


def test_kernel_is_the_default_kind_and_unknown_kinds_are_rejected(tmp_path: Path, capsys) -> None:
    assert "kernel" in KINDS.names()
    assert load_scenario(str(_scenario(tmp_path))).kind == "kernel"
    bad = _scenario(tmp_path, "kind: kernal\n")
    capsys.readouterr()
    assert main(["validate", str(bad)]) == 2
    assert (
        capsys.readouterr().err.strip()
        == f"error: {bad}: kind: unknown kind 'kernal' (did you mean 'kernel'?); expected one of "
        + ", ".join(KINDS.names())
    )


def test_unknown_executor_is_one_line_exit_2(tmp_path: Path, capsys) -> None:
    capsys.readouterr()
    assert main([str(_scenario(tmp_path)), "--executor", "inlne", "--out", str(tmp_path / "r")]) == 2
    known = "gpus, inline, slurm, submitit-local, subprocess"
    err = capsys.readouterr().err
    assert err.strip() == f"error: unknown executor 'inlne' (did you mean 'inline'?); known: {known}"
    assert not (tmp_path / "r").exists()


class RecordingReporter:
    """Keeps the progress events a reporter gets."""

    def __init__(self) -> None:
        self.events: list[tuple[str, str]] = []

    def start(self, total: int, already_done: int) -> None:
        self.events.append(("start", str(total)))

    def case_started(self, case) -> None:
        self.events.append(("started", case.case_id))

    def case_finished(self, case, record) -> None:
        self.events.append(("finished", case.case_id))

    def stop(self) -> None:
        self.events.append(("stop", ""))


@pytest.mark.parametrize("executor", ["inline", "subprocess"])
def test_progress_sees_each_case_start_before_it_finishes(tmp_path: Path, executor: str) -> None:
    scenario = load_scenario(str(_scenario(tmp_path)))
    reporter = RecordingReporter()
    run_scenario(scenario, tmp_path / "run", "cpu", reporter=reporter, plots=False, executor=executor)
    ids = [c.case_id for c in expand(scenario, "cpu")]
    for case_id in ids:
        started = reporter.events.index(("started", case_id))
        assert started < reporter.events.index(("finished", case_id))
    assert reporter.events[0] == ("start", str(len(ids))) and reporter.events[-1] == ("stop", "")
