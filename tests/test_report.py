"""Markdown report and plots of a run directory, on synthetic records."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from harness.config.scenario import ScenarioError, load_scenario
from harness.plugins.metrics import metric
from harness.results.records import Record, to_dataframe
from harness.results.report import render_report, write_report
from tests.test_compare import CPU_ENV, LENGTHS, edit, make_records, write_run

GPU_ENV = {
    "cpu": "Host CPU",
    "gpu": "NVIDIA H100 80GB HBM3",
    "gpu_count": 1,
    "gpu_driver": "550.54.15",
    "cuda": "12.4",
    "torch": "2.13.0",
    "threads": 16,
    "git_sha": "0123456789abcdef",
}


def with_d_sweep(records: list[Record]) -> list[Record]:
    """Add a `performer` family whose `features` param (= D) takes 16, 32 and 64."""
    extra = []
    for d in (16, 32, 64):
        for rec in (r for r in records if r.label == "linear"):
            extra.append(
                rec.replace(
                    case_id=f"performer-{d}-{rec.seq_len}",
                    variant="performer",
                    impl="native",
                    label=f"performer(features={d})",
                    params={"features": d, "redraw": False},
                    feature_dim=d,
                    time_ms_median=rec.get("time_ms_median") * d / 16,
                    rel_err=0.9 / d,
                )
            )
    return records + extra


def with_modes(records: list[Record]) -> list[Record]:
    """The same cases again in mode fwd_bwd (3x slower, same error)."""
    bwd = [
        r.replace(case_id=r.case_id + "-fb", mode="fwd_bwd", time_ms_median=3 * r.get("time_ms_median"))
        for r in records
    ]
    return records + bwd


def render(records: list[Record], env: dict | None = None, scenario: dict | None = None) -> str:
    return render_report(to_dataframe([r.flat() for r in records]), env or CPU_ENV, scenario, {})


def table_blocks(md: str) -> list[list[str]]:
    """Consecutive runs of Markdown table lines."""
    blocks, cur = [], []
    for line in md.splitlines() + [""]:
        if line.startswith("|"):
            cur.append(line)
        elif cur:
            blocks.append(cur)
            cur = []
    return blocks


def cells(line: str) -> list[str]:
    return [c.strip() for c in line.strip().strip("|").split("|")]


def row_of(md: str, section: str, label: str, nth: int = 0) -> list[str]:
    """Cells of `label`'s row in the `nth` table folded under `<summary><b>{section}</b>`."""
    block = md.split(f"<summary><b>{section}</b>")[nth + 1].split("</details>")[0]
    line = next(ln for ln in block.splitlines() if ln.startswith("|") and cells(ln)[0] == label)
    return cells(line)


def summary_rows(md: str) -> list[dict[str, str]]:
    block = md.split("## Summary")[1].split("\n## ")[0]
    lines = [ln for ln in block.splitlines() if ln.startswith("|")]
    header = cells(lines[0])
    return [dict(zip(header, cells(ln), strict=True)) for ln in lines[2:]]


@pytest.mark.parametrize("status", ["oom", "skipped", "leak", "nan", "error", "timeout"])
def test_failed_cases_are_footnoted_never_blank(status: str) -> None:
    recs = make_records(noise=0.0)
    reason = f"why it was {status}"
    recs = [
        r.replace(status=status, reason=reason, time_ms_median=None, time_ms_samples=[], rel_err=None)
        if r.label == "linear" and r.seq_len == 1024
        else r
        for r in recs
    ]
    md = render(recs)
    assert f"[^1]: {status}: {reason}" in md
    runtime = row_of(md, "Runtime", "linear")
    assert runtime[2].endswith("[^1]") and runtime[1] == "0.400 (0.50x)"
    for block in table_blocks(md):
        for line in block:
            assert all(cells(line)), f"blank cell in {line!r}"
            assert not re.search(r"(?<![\d.])0 ms", line), f"zero time in {line!r}"


def test_report_opens_with_a_summary_to_act_on() -> None:
    md = render(make_records(noise=0.0))
    headings = [ln for ln in md.splitlines() if ln.startswith("## ")]
    assert headings[0] == "## Summary"
    at = {row["N"]: row for row in summary_rows(md)}
    # N=1024: linear 1.6 ms vs flash 3.2 ms (the fastest exact); softmax 8 ms
    assert at["1,024"]["fastest"] == "linear 1.60 ms (2.0x vs flash)"
    assert at["256"]["fastest"] == "flash 0.200 ms (the baseline)"
    assert at["1,024"]["most accurate approximation"].startswith("linear skill 0.25")
    assert (
        at["1,024"]["error-vs-time Pareto front (fastest first)"]
        == "linear 1.60 ms, 0.60 · flash 3.20 ms, 3.0e-07"
    )
    assert at["256"]["least peak memory"] == "softmax 4.00 MiB"
    assert "group" not in summary_rows(md)[0]  # one group: no group column


def with_junk(records: list[Record], skill: float = -7.99) -> list[Record]:
    """Add `junk`: 10x faster than flash and smaller than any, its skill `skill` (error 0.8 * (1 - skill))."""
    return records + [
        r.replace(
            case_id=f"junk-{r.seq_len}",
            variant="linear",
            label="junk",
            time_ms_median=r.get("time_ms_median") / 10,
            peak_mem_bytes=r.get("peak_mem_bytes") // 8,
            rel_err=0.8 * (1 - skill),
            skill=skill,
        )
        for r in records
        if r.label == "flash"
    ]


def test_summary_and_front_leave_out_configurations_below_the_uniform_floor() -> None:
    md = render(with_junk(make_records(noise=0.0)))
    at = {row["N"]: row for row in summary_rows(md)}
    assert (
        at["1,024"]["fastest"]
        == "linear 1.60 ms (2.0x vs flash) (1 faster, below the uniform floor, left out)"
    )
    assert at["256"]["least peak memory"] == "softmax 4.00 MiB (1 smaller, below the uniform floor, left out)"
    assert at["1,024"]["most accurate approximation"].startswith("linear skill 0.25")
    front = at["1,024"]["error-vs-time Pareto front (fastest first)"]
    assert front == "linear 1.60 ms, 0.60 · flash 3.20 ms, 3.0e-07"
    assert "better than the uniform floor (skill > 0) are candidates" in md.split("## Summary")[1]
    # a configuration just above the floor is a candidate like any other
    at = {row["N"]: row for row in summary_rows(render(with_junk(make_records(noise=0.0), skill=0.01)))}
    assert at["1,024"]["fastest"].startswith("junk 0.320 ms (10x vs flash)")
    assert at["1,024"]["error-vs-time Pareto front (fastest first)"].startswith("junk 0.320 ms, 0.79 · ")


def test_most_accurate_says_when_no_approximation_beats_the_floor() -> None:
    recs = [r for r in with_junk(make_records(noise=0.0)) if r.label != "linear"]
    at = {row["N"]: row for row in summary_rows(render(recs))}
    assert (
        at["256"]["most accurate approximation"]
        == "none beats the uniform floor (best: junk skill -7.99 (rel_err 7.2))"
    )


def test_per_group_tables_are_folded_and_headed_from_the_registry() -> None:
    md = render(with_d_sweep(make_records(noise=0.0)))
    body = md.split("## Performance by group")[1]
    assert body.count("<details>") == body.count("</details>") >= 6
    assert all(
        block[0].startswith("| ") and re.fullmatch(r"\|(:?-+:?\|)+", block[1]) for block in table_blocks(md)
    )
    assert all(len({ln.count("|") for ln in block}) == 1 for block in table_blocks(md))
    assert metric("time_ms_median").header() in md  # "median time per call (ms, ↓ better)"
    assert metric("tflops_exact").header() in md and metric("skill").better == "↑ better"


def test_runtime_memory_error_and_throughput_tables() -> None:
    md = render(make_records(noise=0.0))
    # flash 0.2 ms * 16 = 3.2 ms at N=1024; linear 0.4 ms * 4 = 1.6 ms: 2x faster than flash
    assert row_of(md, "Runtime", "linear")[2] == "1.60 (2.0x)"
    assert row_of(md, "Runtime", "flash")[2] == "3.20 (base)"
    assert row_of(md, "Memory", "linear")[1] == "4.00 / 1.00 (1.0x base)"
    error = row_of(md, "Error", "linear")
    assert error[1].startswith("0.60") and "skill 0.25" in error[1]
    assert row_of(md, "Error", "uniform attention (floor)")[1:] == ["0.800", "0.800"]
    assert "own " in row_of(md, "Throughput", "flash")[1] and "GB/s" in row_of(md, "Throughput", "flash")[1]


def test_throughput_both_ways() -> None:
    recs = [r.replace(exact_flops=4.0 * r.seq_len**2 * 32) for r in make_records(noise=0.0)]
    cell = row_of(render(recs), "Throughput", "linear")[2]
    # linear at N=1024: own flops 4*N^2*32 over 1.6 ms = 0.0839 TFLOP/s, the same FLOPs as exact here
    assert "own 0.0839 TFLOP/s" in cell and "exact 0.0839 TFLOP/s" in cell


def test_baseline_is_chosen_by_capability_not_by_name() -> None:
    recs = [r.replace(exact=r.label == "linear") for r in make_records(noise=0.0)]
    md = render(recs)
    assert row_of(md, "Runtime", "linear")[1] == "0.400 (base)"
    assert row_of(md, "Runtime", "flash")[1] == "0.200 (2.0x)"
    runtime = md.split("<summary><b>Runtime</b>")[1].split("</details>")[0]
    assert runtime.index("| linear") < runtime.index("| softmax")  # exact configurations come first


def test_scenario_baseline_key_sets_the_speed_baseline() -> None:
    md = render(make_records(noise=0.0), scenario={"name": "x", "report": {"baseline": "softmax"}})
    assert row_of(md, "Runtime", "flash")[1] == "0.200 (2.5x)"  # softmax 0.5 ms / flash 0.2 ms
    assert row_of(md, "Runtime", "softmax")[1] == "0.500 (base)"
    assert "the scenario's baseline `softmax`" in md


def test_error_tables_are_not_repeated_across_modes() -> None:
    md = render(with_modes(make_records(noise=0.0)))
    assert md.count("### fp32 · non-causal · fwd\n") == 1 and md.count("### fp32 · non-causal · fwd_bwd") == 1
    assert md.count("<summary><b>Runtime</b>") == 2 and md.count("<summary><b>Error</b>") == 1
    assert "### fp32 · non-causal\n" in md.split("## Accuracy")[1]
    assert {row["group"] for row in summary_rows(md)} == {
        "fp32 · non-causal · fwd",
        "fp32 · non-causal · fwd_bwd",
    }


@pytest.mark.parametrize("change", [{"noise": 0.5}, {"n_samples": 3}])
def test_noisy_times_are_marked_where_they_feed_a_claim(change: dict) -> None:
    md = render(edit(make_records(noise=0.0), "linear", **change))
    assert row_of(md, "Runtime", "linear")[2] == "1.60 (2.0x)†"
    assert row_of(md, "Efficiency length", "linear")[1].endswith("†")
    assert {row["N"]: row for row in summary_rows(md)}["1,024"]["fastest"].endswith("†")
    assert row_of(md, "Runtime", "flash")[2] == "3.20 (base)"  # flash itself is not noisy


def test_unfitted_error_shown_for_learnable_variants() -> None:
    recs = edit(make_records(noise=0.0), "linear", unfitted_rel_err=0.7)
    assert "unfit 0.70" in row_of(render(recs), "Error", "linear")[1]


def test_efficiency_length_is_interpolated_in_log_space() -> None:
    # linear/flash time ratio = 2 * 256 / N: crosses 1 at N = 512; softmax/flash = 2.5 everywhere
    md = render(make_records(noise=0.0))
    assert row_of(md, "Efficiency length", "linear")[1] == "≈ 512 (between 256 and 1,024)"
    assert row_of(md, "Efficiency length", "softmax")[1].startswith("never in range")
    faster = render(edit(make_records(noise=0.0), "linear", time_ms_median=lambda t: t / 10))
    assert (
        row_of(faster, "Efficiency length", "linear")[1]
        == "faster at every measured length (from N=256 or below)"
    )


def test_feature_dimension_table() -> None:
    md = render(with_d_sweep(make_records(noise=0.0)))
    block = md.split("<summary><b>Error and time vs feature dimension D</b>")[1].split("</details>")[0]
    lines = [ln for ln in block.splitlines() if ln.startswith("|")]
    assert cells(lines[0]) == ["variant", "N", "D=16", "D=32", "D=64"]
    row = cells(lines[2])
    assert row[:2] == ["performer", "1024"]
    assert row[2].startswith("0.056 · ") and row[4].startswith("0.014 · ")


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        (
            GPU_ENV,
            ["**GPU:** NVIDIA H100", "driver 550.54.15", "CUDA 12.4", "torch 2.13.0", "git 0123456789"],
        ),
        (CPU_ENV, ["**CPU:** Test CPU", "no GPU", "torch 2.13.0", "git sha unknown"]),
    ],
)
def test_machine_header(env: dict, expected: list[str]) -> None:
    header = "\n".join(render(make_records(noise=0.0), env).splitlines()[:8])
    for text in expected:
        assert text in header


def test_schema_1_records_find_their_exact_reference_in_the_registry(tmp_path: Path) -> None:
    run = tmp_path / "old"
    run.mkdir()
    lines = []
    for rec in make_records(noise=0.0):
        row = rec.flat()
        for key in ("exact", "tflops_exact", "exact_flops", "kind", "task"):  # schema 1 had none
            row.pop(key, None)
        lines.append(json.dumps({**row, "schema_version": 1}))
    (run / "records.jsonl").write_text("\n".join(lines) + "\n")
    md = write_report(run, plots=False).read_text()
    assert row_of(md, "Runtime", "flash")[2] == "3.20 (base)"  # flash: capabilities.exact


def test_write_report_links_existing_pngs_and_reads_the_baseline(tmp_path: Path) -> None:
    recs = with_d_sweep(make_records(noise=0.0))
    recs = [
        r.replace(status="oom", reason="out of memory") if r.label == "softmax" and r.seq_len == 1024 else r
        for r in recs
    ]
    run = write_run(tmp_path / "run", recs)
    (run / "scenario.json").write_text(json.dumps({"name": "synthetic", "report": {"baseline": "linear"}}))
    md = write_report(run).read_text()
    links = re.findall(r"\]\((plots/[^)]+\.png)\)", md)
    kinds = {Path(link).name.split("_fp32")[0] for link in links}
    assert kinds == {"runtime", "memory", "error_vs_d", "frontier", "slide.png", "error_vs_n_gaussian"}
    for link in links:
        assert (run / link).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "[^1]: oom: out of memory" in md
    assert row_of(md, "Runtime", "linear")[1] == "0.400 (base)"


def _scenario(tmp_path: Path, report: str) -> Path:
    path = tmp_path / "s.yaml"
    path.write_text(
        "name: s\nproblem: {batch: 1, heads: 1, head_dim: 8, seq_len: 16}\n"
        "variants:\n  - name: flash\n  - name: linear\n    label: lin\n" + report
    )
    return path


@pytest.mark.parametrize("baseline", ["flash", "flash[sdpa]", "lin", "linear"])
def test_report_block_accepts_variants_and_labels(tmp_path: Path, baseline: str) -> None:
    assert (
        load_scenario(str(_scenario(tmp_path, f"report: {{baseline: '{baseline}'}}\n"))).report.baseline
        == baseline
    )


@pytest.mark.parametrize(
    ("block", "message"),
    [
        (
            "report: {baseline: flahs}\n",
            "report.baseline: unknown variant or label 'flahs' (did you mean 'flash'?)",
        ),
        ("report: {baselin: flash}\n", "report.baselin: unknown key (did you mean 'baseline'?)"),
        ("report: {max_noise: -1}\n", "report.max_noise: expected a number > 0"),
    ],
)
def test_report_block_is_validated(tmp_path: Path, block: str, message: str) -> None:
    with pytest.raises(ScenarioError) as err:
        load_scenario(str(_scenario(tmp_path, block)))
    assert message in str(err.value)


def test_lengths_fixture_is_what_the_tables_assume() -> None:
    assert LENGTHS == (256, 1024)


def test_frontier_plot_draws_the_uniform_floor_and_joins_only_points_below_it(monkeypatch, tmp_path) -> None:
    from harness.kinds.kernel import plots
    from harness.kinds.kernel.rows import iter_groups

    drawn = {}
    monkeypatch.setattr(
        plots, "_finish", lambda fig, ax, title, path, legend=True: drawn.setdefault("ax", ax)
    )
    df = to_dataframe([r.flat() for r in with_junk(make_records(noise=0.0))])
    (_, rows), *_ = iter_groups(df)
    plots._frontier(rows, "t", tmp_path / "f.png")
    lines = {line.get_label(): line for line in drawn["ax"].get_lines()}
    assert list(lines["uniform floor"].get_ydata()) == [0.8, 0.8]  # make_records: uniform_rel_err 0.8
    front = lines["Pareto frontier (below the floor)"].get_ydata()
    assert len(front) == 2 and max(front) < 0.8  # junk (error 7.2, 10x faster) is not on it
