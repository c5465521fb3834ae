"""The sweep: run directory, resume, the OOM rule, and one record appended per finished case.

Run directory layout:
    run.json         run_id, scenario path, started_at, argv (kept on --resume)
    scenario.json    the resolved scenario
    env.json         machine and software fingerprint
    records.jsonl    one JSON record per case, appended and fsynced as each case ends
    roofline.json    measured copy bandwidth and GEMM rates (when measure.roofline is on)
    records.parquet  the same as a table (written at the end, and by `report`)
    report.md        Markdown tables (+ PNG plots)
"""

from __future__ import annotations

import json
import sys
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import torch

from harness.config.scenario import Scenario, ScenarioError, scenario_to_dict
from harness.config.sweep import Case
from harness.execute.executors import EXECUTORS, RecordSink
from harness.execute.pipeline import CaseContext
from harness.execute.plan import plan
from harness.execute.progress import Reporter, make_reporter
from harness.measure import env as env_mod
from harness.measure.roofline import Roofline, measure_roofline
from harness.plugins.kinds import KINDS
from harness.results.records import Record, append_record, read_records, repair_torn_tail, write_parquet


class RunDirError(ValueError):
    """A run directory that cannot be used as asked (exists without --resume, wrong scenario)."""


@dataclass
class RunSummary:
    out_dir: Path
    total: int
    ran: int
    already_done: int
    statuses: dict[str, int]
    interrupted: bool = False


def resolve_device(scenario: Scenario, override: str | None) -> str:
    """cpu | cuda from the scenario's device and the --device override; fails fast without a GPU."""
    wanted = override or scenario.device
    if wanted == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if wanted == "cuda" and not torch.cuda.is_available():
        source = "--device" if override else "device"
        raise ScenarioError(
            f"{scenario.path}: {source}: cuda requested but no CUDA GPU is available here "
            f"(torch {torch.__version__}); use --device cpu to run it on the CPU"
        )
    return wanted


def default_out_dir(scenario: Scenario) -> Path:
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    return Path("runs") / f"{scenario.name}-{stamp}"


def _prepare_dir(out_dir: Path, scenario: Scenario, resume: bool, argv: list[str]) -> str:
    """Create or reopen `out_dir`; returns the run id."""
    run_json = out_dir / "run.json"
    records = out_dir / "records.jsonl"
    if resume:
        if not run_json.exists():
            raise RunDirError(f"{out_dir}: --resume: no run.json here; nothing to resume")
        meta = json.loads(run_json.read_text())
        if meta.get("scenario_name") != scenario.name:
            raise RunDirError(
                f"{out_dir}: --resume: this run is of scenario {meta.get('scenario_name')!r}, "
                f"not {scenario.name!r}"
            )
        repair_torn_tail(records)
        return meta["run_id"]
    if records.exists() and records.stat().st_size > 0:
        raise RunDirError(
            f"{out_dir}: already holds records; pass --resume to continue it or choose another --out"
        )
    out_dir.mkdir(parents=True, exist_ok=True)
    run_id = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ-") + uuid.uuid4().hex[:6]
    meta = {
        "run_id": run_id,
        "scenario_path": scenario.path,
        "scenario_name": scenario.name,
        "started_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "argv": argv,
    }
    run_json.write_text(json.dumps(meta, indent=2) + "\n")
    (out_dir / "scenario.json").write_text(
        json.dumps(scenario_to_dict(scenario), indent=2, default=str) + "\n"
    )
    return run_id


def _oom_lengths(done: list[dict]) -> dict[str, int]:
    oom_at: dict[str, int] = {}
    for r in done:
        if r.get("status") == "oom":
            key = r["config_key"]
            oom_at[key] = min(oom_at.get(key, r["seq_len"]), r["seq_len"])
    return oom_at


class _RunWriter(RecordSink):
    """The run directory's one writer: appends each record as it ends, counts statuses, reports."""

    def __init__(self, records_path: Path, reporter: Reporter) -> None:
        self.records_path, self.reporter = records_path, reporter
        self.statuses: dict[str, int] = {}
        self.ran = 0

    def case_started(self, case: Case) -> None:
        self.reporter.case_started(case)

    def case_finished(self, case: Case, record: Record) -> None:
        append_record(self.records_path, record)
        self.ran += 1
        self.statuses[record.status] = self.statuses.get(record.status, 0) + 1
        self.reporter.case_finished(case, record)


def run_scenario(
    scenario: Scenario,
    out_dir: Path,
    device: str,
    resume: bool = False,
    only: list[str] | None = None,
    case_ids: list[str] | None = None,
    reporter: Reporter | None = None,
    scenario_arg: str | None = None,
    argv: list[str] | None = None,
    plots: bool = True,
    executor: str = "inline",
) -> RunSummary:
    """Plan, execute and finalize every case of `scenario` not yet recorded in `out_dir`.

    Ctrl-C keeps what finished (the report is still written).
    """
    out_dir = Path(out_dir)
    executor_cls = EXECUTORS.get(executor)
    run_id = _prepare_dir(out_dir, scenario, resume, argv if argv is not None else sys.argv)
    env = env_mod.collect_env()
    (out_dir / "env.json").write_text(json.dumps(env, indent=2, default=str) + "\n")

    records_path = out_dir / "records.jsonl"
    done = read_records(records_path)
    cases, groups = plan(scenario, device, only, case_ids, done={r["case_id"] for r in done})
    todo = sum(len(g.cases) for g in groups)
    oom_at = _oom_lengths(done)
    ctx = CaseContext(scenario, run_id, env.get("git_sha", ""), scenario_arg or scenario.path, device)
    if scenario.measure.roofline:
        ctx.roofline = _roofline(out_dir, device, [c.problem.dtype for c in cases])

    reporter = reporter or make_reporter(quiet=False)
    writer = _RunWriter(records_path, reporter)
    interrupted = False
    reporter.start(len(cases), len(cases) - todo)
    try:
        kind = KINDS.get(scenario.kind)()
        executor_cls().execute(groups, lambda case: kind.run_case(case, ctx, oom_at), writer)
    except KeyboardInterrupt:
        interrupted = True
    finally:
        reporter.stop()
        finish_run_dir(out_dir, plots=plots)
    return RunSummary(out_dir, len(cases), writer.ran, len(cases) - todo, writer.statuses, interrupted)


def _roofline(out_dir: Path, device: str, dtypes: list[str]) -> Roofline:
    """The device's measured rates: read from roofline.json on resume, else measured and written."""
    path = out_dir / "roofline.json"
    if path.exists():
        known = Roofline.from_dict(json.loads(path.read_text()))
        if known.device == device and set(dtypes) <= set(known.matmul_tflops):
            return known
    roofline = measure_roofline(device, dtypes)
    path.write_text(json.dumps(roofline.to_dict(), indent=2) + "\n")
    return roofline


def finish_run_dir(out_dir: Path, plots: bool = True) -> None:
    """Write records.parquet and report.md from records.jsonl (safe to call repeatedly)."""
    from harness.results.report import write_report

    records = read_records(out_dir / "records.jsonl")
    if not records:
        return
    write_parquet(records, out_dir / "records.parquet")
    write_report(out_dir, plots=plots)
