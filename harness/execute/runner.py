"""The sweep: plan -> execute -> finalize in one run directory (layout: harness/execute/rundir.py).

The runner is the run directory's one writer (`writer.lock`): it plans the cases not yet
recorded, hands their groups to an executor, follows the workers' records for progress, and
finalizes (merged `records.jsonl`, parquet, report). A case a dead worker left started but
unrecorded is recorded `crashed` on resume and not run again, unless `--retry-crashed`.
"""

from __future__ import annotations

import json
import re
import sys
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import torch

from harness.common.files import write_atomic
from harness.config.scenario import Scenario, ScenarioError
from harness.config.sweep import Case
from harness.execute.context import CaseContext
from harness.execute.devicelock import device_key, device_lock
from harness.execute.executors import EXECUTORS, Execution, ExecutorOptions
from harness.execute.plan import group_cases, select_cases
from harness.execute.progress import Reporter, make_reporter
from harness.execute.rundir import open_run_dir, writer_lock
from harness.execute.worker import failure_records
from harness.measure import env as env_mod
from harness.measure.canary import record_canary
from harness.measure.hygiene import apply_threads
from harness.measure.roofline import Roofline, measure_roofline
from harness.results.case_record import new_record
from harness.results.records import Record, write_parquet
from harness.results.run_records import (
    add_record,
    corrupt_record_ids,
    merge_run,
    read_run_records,
    started_case_ids,
)

PARENT = "main"  # the worker id under which the runner itself records (inline cases, crashes found on resume)


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
    """runs/<slug of the scenario name>-<time>: always one folder directly under runs/, whatever
    the name holds (`../x`, `/abs`, separators, dots or a very long name)."""
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "-", scenario.name).strip(".-")[:80].strip(".-") or "scenario"
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    return Path("runs") / f"{slug}-{stamp}"


def _record_stale_starts(out_dir: Path, ctx: CaseContext, cases: dict[str, Case], retry: bool) -> set[str]:
    """Cases started by a process that died before recording them. A supervised worker's case
    (its parent records a worker's death itself) was lost with the whole run and runs again; an
    unsupervised one (inline: the case may have killed the run) is recorded `crashed` unless
    `retry`. Returns the ids to run again (and, with `retry`, the crashed ones)."""
    recorded = {r["case_id"]: r for r in read_run_records(out_dir)}
    again = {cid for cid, r in recorded.items() if r.get("status") == "crashed"} if retry else set()
    corrupt = corrupt_record_ids(out_dir)  # their record line is unreadable: run them again
    for case_id, mark in started_case_ids(out_dir).items():
        if case_id in recorded or case_id not in cases:
            continue
        if retry or mark.get("supervised") or case_id in corrupt:
            again.add(case_id)
            continue
        rec = new_record(cases[case_id], ctx)
        rec.status = "crashed"
        rec.reason = (
            f"started at {mark.get('at', '?')} by worker {mark.get('worker', '?')} "
            f"(pid {mark.get('pid', '?')}), which died before recording it; run it again with --retry-crashed"
        )
        add_record(out_dir, PARENT, rec)
    return again


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
    executor: str = "subprocess",
    options: ExecutorOptions | None = None,
    retry_crashed: bool = False,
) -> RunSummary:
    """Plan, execute and finalize every case of `scenario` not yet recorded in `out_dir`.

    Ctrl-C keeps what finished (the report is still written).
    """
    out_dir = Path(out_dir)
    executor_cls = EXECUTORS.get(executor)
    options = options or ExecutorOptions()
    executor_cls.preflight(options)  # a missing GPU or cluster fails here, before anything is written
    out_dir.mkdir(parents=True, exist_ok=True)
    with writer_lock(out_dir, resume):
        apply_threads(scenario.measure, device)  # as the workers will: env.json records it
        env = env_mod.collect_env()
        argv = argv if argv is not None else sys.argv
        run_id = open_run_dir(
            out_dir, scenario, resume, argv, env.get("git_sha", ""), scenario_arg or scenario.path
        )
        if not (out_dir / "env.json").exists():  # the first environment; every worker's in envs/
            write_atomic(out_dir / "env.json", json.dumps(env, indent=2, default=str) + "\n")
        ctx = CaseContext(scenario, run_id, env.get("git_sha", ""), scenario_arg or scenario.path, device)
        ctx.set_provenance(PARENT, env_mod.write_env(out_dir, env))
        cases = select_cases(scenario, device, only, case_ids)
        by_id = {c.case_id: c for c in cases}
        again = _record_stale_starts(out_dir, ctx, by_id, retry_crashed)
        done = {r["case_id"] for r in read_run_records(out_dir)} - again
        groups = group_cases(cases, done)
        todo = sum(len(g.cases) for g in groups)
        if scenario.measure.roofline:
            _roofline(out_dir, device, [c.problem.dtype for c in cases])

        reporter = reporter or make_reporter(quiet=False)
        statuses: dict[str, int] = {}

        def on_row(case_id: str, row: dict) -> None:
            statuses[row["status"]] = statuses.get(row["status"], 0) + 1
            reporter.case_finished(by_id[case_id], Record.from_dict(row))

        run = Execution(
            out_dir,
            device,
            groups,
            scenario.measure.timeout_s,
            options,
            failure_records(ctx, by_id),
            on_row,
            on_start=lambda case_id: reporter.case_started(by_id[case_id]),
        )
        interrupted = False
        reporter.start(len(cases), len(cases) - todo)
        lock = device_key(device, ctx.device_uuid, ctx.visible_devices)
        try:
            if todo:  # the canary brackets the cases (workers time it between them): drift evidence
                with device_lock(out_dir, lock):
                    record_canary(out_dir, PARENT, device, "start")
            executor_cls().execute(run)
            if todo:
                with device_lock(out_dir, lock):
                    record_canary(out_dir, PARENT, device, "end")
        except KeyboardInterrupt:
            interrupted = True
        finally:
            reporter.stop()
            finish_run_dir(out_dir, plots=plots)
    ran = sum(statuses.values())
    return RunSummary(out_dir, len(cases), ran, len(cases) - todo, statuses, interrupted)


def _roofline(out_dir: Path, device: str, dtypes: list[str]) -> Roofline:
    """The device's measured rates: read from roofline.json on resume, else measured and written."""
    path = out_dir / "roofline.json"
    if path.exists():
        known = Roofline.from_dict(json.loads(path.read_text()))
        if known.device == device and set(dtypes) <= set(known.matmul_tflops):
            return known
    roofline = measure_roofline(device, dtypes)
    write_atomic(path, json.dumps(roofline.to_dict(), indent=2) + "\n")
    return roofline


def finish_run_dir(out_dir: Path, plots: bool = True) -> None:
    """Merge every worker's records into records.jsonl, then write records.parquet and report.md
    (safe to call repeatedly)."""
    from harness.results.report import write_report

    records = merge_run(out_dir)
    if not records:
        return
    write_parquet(records, out_dir / "records.parquet")
    write_report(out_dir, plots=plots)
