"""Provenance per record (host, device, worker, env_id), `measure.threads` and the load mark."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from harness.config.scenario import ScenarioError, load_scenario
from harness.config.sweep import expand
from harness.execute.context import CaseContext
from harness.execute.lifecycle import run_case
from harness.kinds.kernel.kind import KernelKind
from harness.measure import env, hygiene
from harness.measure.specs import MeasureSpec
from harness.regress.runs import load_run
from harness.results.records import READABLE_SCHEMAS, Record, to_dataframe
from harness.results.report import write_report
from tests.test_compare import CPU_ENV, edit, make_records, write_run
from tests.test_report import render, row_of, summary_rows

SCENARIO = """name: prov
device: cpu
problem: {{batch: 1, heads: 1, head_dim: 8, seq_len: 16, mode: [fwd]}}
variants: [{{name: softmax}}]
accuracy: {{rows: 8}}
measure: {{warmup_ms: 0, min_samples: 2, rep_ms: 0, memory: false, timeout_s: 30{extra}}}
checks: {{batch_independence: false}}
"""


@pytest.fixture(autouse=True)
def keep_threads():
    """Every test leaves torch's thread count as it found it."""
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def scenario(tmp_path: Path, extra: str = ""):
    path = tmp_path / "s.yaml"
    path.write_text(SCENARIO.format(extra=extra))
    return load_scenario(str(path))


def run_one(tmp_path: Path, extra: str = "", ctx_setup=None) -> Record:
    sc = scenario(tmp_path, extra)
    (case,) = expand(sc, "cpu")
    ctx = CaseContext(sc, "run", "sha", "s.yaml", "cpu")
    if ctx_setup is not None:
        ctx_setup(ctx)
    rec = run_case(KernelKind(), case, ctx, {})
    assert rec.status == "ok", rec.reason
    return rec


# ----- environment fingerprints -------------------------------------------------------------
def test_env_id_hashes_the_stack_not_volatile_values() -> None:
    base = {**CPU_ENV, "hostname": "a", "git_sha": "1", "packages": {"numpy": "2.0"}}
    assert env.env_id(base) == env.env_id({**base, "collected_at": "now", "gpu_driver_error": "x"})
    assert len(env.env_id(base)) == 12
    for key, value in (
        ("hostname", "b"),
        ("torch", "2.14.0"),
        ("packages", {"numpy": "2.1"}),
        ("threads", 1),
    ):
        assert env.env_id({**base, key: value}) != env.env_id(base), key


def test_write_env_writes_once_and_never_overwrites(tmp_path: Path) -> None:
    ident = env.write_env(tmp_path, CPU_ENV)
    path = tmp_path / "envs" / f"{ident}.json"
    assert ident == env.env_id(CPU_ENV) and json.loads(path.read_text())["cpu"] == "Test CPU"
    path.write_text('{"cpu": "edited"}')
    assert env.write_env(tmp_path, {**CPU_ENV, "collected_at": "later"}) == ident
    assert json.loads(path.read_text()) == {"cpu": "edited"}
    assert sorted(p.name for p in (tmp_path / "envs").iterdir()) == [f"{ident}.json"]  # no temp left


def fake_cuda(monkeypatch: pytest.MonkeyPatch, current: int) -> None:
    """Two fake CUDA devices, `current` selected: names GPU0/GPU1, uuids uuid-0/uuid-1."""

    def props(i: int) -> SimpleNamespace:
        return SimpleNamespace(
            name=f"GPU{i}",
            uuid=f"uuid-{i}",
            total_memory=1 << 30,
            major=9,
            minor=0,
            multi_processor_count=132,
        )

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: current)
    monkeypatch.setattr(torch.cuda, "get_device_properties", props)


def test_collect_env_and_identity_describe_the_current_device(monkeypatch: pytest.MonkeyPatch) -> None:
    fake_cuda(monkeypatch, current=1)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,5")
    facts = env.collect_env()
    assert (facts["gpu"], facts["gpu_index"], facts["gpu_uuid"]) == ("GPU1", 1, "uuid-1")
    assert facts["visible_devices"] == "3,5"
    assert env.device_identity("cuda") == {"name": "GPU1", "uuid": "uuid-1"}
    assert env.device_identity("cuda:0") == {"name": "GPU0", "uuid": "uuid-0"}
    assert env.device_identity("cpu") == {"name": env.cpu_name(), "uuid": ""}
    ctx = CaseContext(None, "run", "sha", "s.yaml", "cuda")
    ctx.set_provenance("gpu1", "abc")
    assert (ctx.worker, ctx.env_id, ctx.device_name, ctx.device_uuid) == ("gpu1", "abc", "GPU1", "uuid-1")
    assert (ctx.host, ctx.visible_devices) == (socket.gethostname(), "3,5")


# ----- records ------------------------------------------------------------------------------
def test_records_carry_provenance_load_cores_and_one_thread(tmp_path: Path, monkeypatch) -> None:
    loads = iter([5.0, 7.0])
    monkeypatch.setattr(hygiene, "load_average", lambda: next(loads))
    rec = run_one(tmp_path)
    assert (rec.get("load_before"), rec.get("load_after")) == (5.0, 7.0)  # before timing, after memory
    assert rec.cores == os.cpu_count() and rec.threads == 1 == torch.get_num_threads()
    assert (rec.host, rec.worker, rec.env_id) == (socket.gethostname(), "main", "")
    assert (rec.device_name, rec.device_uuid) == (env.cpu_name(), "")
    row = json.loads(json.dumps(rec.flat()))
    assert row["schema_version"] == 3 and row["load_before"] == 5.0 and row["host"] == rec.host


def test_real_load_average_is_recorded(tmp_path: Path) -> None:
    rec = run_one(tmp_path)
    assert isinstance(rec.get("load_before"), float) and isinstance(rec.get("load_after"), float)


def test_set_provenance_names_the_worker_and_env(tmp_path: Path) -> None:
    rec = run_one(tmp_path, ctx_setup=lambda ctx: ctx.set_provenance("w3", "0123abcd"))
    assert (rec.worker, rec.env_id, rec.host) == ("w3", "0123abcd", socket.gethostname())


@pytest.mark.parametrize(("extra", "expected"), [(", threads: 3", 3), (", threads: null", 2), ("", 1)])
def test_threads_are_applied(tmp_path: Path, monkeypatch, extra: str, expected: int) -> None:
    monkeypatch.setattr(hygiene, "DEFAULT_THREADS", 2)  # torch's default as if on a 2-core machine
    torch.set_num_threads(4)  # whatever ran before: every case sets its own count
    assert run_one(tmp_path, extra).threads == expected


def test_apply_threads_leaves_gpu_runs_alone() -> None:
    torch.set_num_threads(3)
    assert hygiene.apply_threads(MeasureSpec(threads=1), "cuda") == 3
    assert hygiene.apply_threads(MeasureSpec(threads=1), "cpu") == 1


@pytest.mark.parametrize("bad", ["0", "-1", "two", "1.5", "true"])
def test_threads_is_validated(tmp_path: Path, bad: str) -> None:
    with pytest.raises(ScenarioError, match="measure.threads"):
        scenario(tmp_path, f", threads: {bad}")
    assert scenario(tmp_path, ", threads: null").measure.threads is None


def test_old_records_read_with_empty_provenance(tmp_path: Path) -> None:
    row = make_records()[0].flat()
    for key in ("host", "worker", "device_name", "device_uuid", "visible_devices", "env_id", "cores"):
        del row[key]
    old = {**row, "schema_version": 2}
    assert Record.from_dict(old).host == "" and Record.from_dict(old).cores is None
    df = to_dataframe([old])
    assert df.loc[0, "host"] == "" and df.loc[0, "env_id"] == "" and df.loc[0, "worker"] == ""
    assert READABLE_SCHEMAS == (1, 2, 3)
    run = write_run(tmp_path / "old", make_records())
    lines = [json.dumps({**json.loads(x), "schema_version": 2}) for x in (run / "records.jsonl").open()]
    (run / "records.jsonl").write_text("\n".join(lines) + "\n")
    assert len(load_run(run).records) == len(lines)


# ----- the report ---------------------------------------------------------------------------
def loaded(records: list[Record], label: str, load: float, cores: int = 2) -> list[Record]:
    return [
        r.replace(load_before=load, load_after=0.5, cores=cores) if r.label == label else r for r in records
    ]


def test_time_measured_under_load_is_marked_where_it_feeds_a_claim() -> None:
    md = render(loaded(make_records(noise=0.0), "linear", load=5.0))
    assert row_of(md, "Runtime", "linear")[2] == "1.60 (2.0x)‡"
    assert row_of(md, "Runtime", "flash")[2] == "3.20 (base)"  # flash was measured at rest
    assert row_of(md, "Efficiency length", "linear")[1].endswith("‡")
    at = {row["N"]: row for row in summary_rows(md)}
    assert (
        at["1,024"]["fastest"].endswith("‡")
        and "linear 1.60 ms, 0.60‡" in at["1,024"]["error-vs-time Pareto front (fastest first)"]
    )
    assert "‡ = measured under load: the host's 1-minute load average was up to 5.0 on 2 cores" in md


def test_loaded_baseline_marks_the_speedups_and_both_marks_combine() -> None:
    recs = edit(loaded(make_records(noise=0.0), "flash", load=9.0, cores=8), "linear", noise=0.5)
    md = render(recs)
    assert row_of(md, "Runtime", "linear")[2] == "1.60 (2.0x)†‡"
    assert row_of(md, "Runtime", "flash")[2] == "3.20 (base)‡"


def test_load_at_or_below_the_cores_is_not_marked() -> None:
    md = render(loaded(make_records(noise=0.0), "linear", load=2.0))
    assert "‡" not in md


def test_report_lists_the_environments_of_a_run(tmp_path: Path) -> None:
    one, two = {**CPU_ENV, "hostname": "box-a"}, {**CPU_ENV, "hostname": "box-b", "cpu": "Other CPU"}
    recs = make_records(noise=0.0)
    recs = [r.replace(env_id="aaa" if i % 3 else "bbb") for i, r in enumerate(recs)]
    run = write_run(tmp_path / "run", recs)
    (run / "env.json").unlink()
    (run / "envs").mkdir()
    (run / "envs" / "aaa.json").write_text(json.dumps(one))
    md = write_report(run, plots=False).read_text()
    assert "**Environments:**" not in md and "**CPU:** Test CPU" in md  # one env: it is the header
    (run / "envs" / "bbb.json").write_text(json.dumps(two))
    (run / "envs" / "ccc.json").write_text(json.dumps({**two, "hostname": "idle-parent"}))  # ran nothing
    (run / "env.json").write_text(json.dumps({**CPU_ENV, "cpu": "Parent CPU"}))
    md = write_report(run, plots=False).read_text()
    assert "**Environments:** 2" in md and "idle-parent" not in md
    assert "**CPU:** Test CPU" in md  # the header names where most records ran, not env.json
    assert "- `aaa`: host box-a · CPU Test CPU · torch 2.13.0 · 2 threads — 4 cases" in md
    assert "- `bbb`: host box-b · CPU Other CPU · torch 2.13.0 · 2 threads — 2 cases" in md
