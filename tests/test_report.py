"""Markdown report and plots of a run directory, on synthetic records."""

from __future__ import annotations

import re
from dataclasses import asdict, replace
from pathlib import Path

import pytest

from harness.results.records import Record, to_dataframe
from harness.results.report import efficiency_table, render_report, write_report
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
    template = next(r for r in records if r.label == "linear")
    extra = []
    for d in (16, 32, 64):
        for n in LENGTHS:
            rec = next(r for r in records if r.label == "linear" and r.seq_len == n)
            extra.append(
                replace(
                    template,
                    **{
                        **{k: getattr(rec, k) for k in ("seq_len", "time_ms_samples", "peak_mem_bytes")},
                        "case_id": f"performer-{d}-{n}",
                        "variant": "performer",
                        "impl": "native",
                        "label": f"performer(features={d})",
                        "params": {"features": d, "redraw": False},
                        "feature_dim": d,
                        "time_ms_median": rec.time_ms_median * d / 16,
                        "rel_err": 0.9 / d,
                        "unfitted_rel_err": None,
                    },
                )
            )
    return records + extra


def render(records: list[Record], env: dict | None = None) -> str:
    return render_report(to_dataframe([asdict(r) for r in records]), env or CPU_ENV, None, {})


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


def row_of(md: str, section: str, label: str) -> list[str]:
    """Cells of `label`'s row in the first table after the heading `### {section}`."""
    block = md.split(f"### {section}")[1]
    line = next(ln for ln in block.splitlines() if ln.startswith(f"| {label} |"))
    return [c.strip() for c in line.strip("|").split("|")]


@pytest.mark.parametrize("status", ["oom", "skipped", "leak", "nan", "error", "timeout"])
def test_failed_cases_are_footnoted_never_blank(status: str) -> None:
    recs = make_records(noise=0.0)
    reason = f"why it was {status}"
    recs = [
        replace(r, status=status, reason=reason, time_ms_median=None, time_ms_samples=[], rel_err=None)
        if r.label == "linear" and r.seq_len == 1024
        else r
        for r in recs
    ]
    md = render(recs)
    assert f"[^1]: {status}: {reason}" in md
    runtime = row_of(md, "Runtime", "linear")
    assert runtime[2].endswith("[^1]") and runtime[1].endswith("ms (0.50x)")
    for block in table_blocks(md):
        for line in block:
            cells = [c.strip() for c in line.strip("|").split("|")]
            assert all(cells), f"blank cell in {line!r}"
            assert not re.search(r"(?<![\d.])0 ms", line), f"zero time in {line!r}"


def test_every_table_has_a_header_and_a_separator() -> None:
    md = render(with_d_sweep(make_records(noise=0.0)))
    blocks = table_blocks(md)
    assert len(blocks) >= 6
    for block in blocks:
        assert block[0].startswith(("| configuration |", "| variant |"))
        assert re.fullmatch(r"\|(-{3}:?\|)+", block[1])
        assert len({line.count("|") for line in block}) == 1  # same column count on every row


def test_runtime_memory_error_and_throughput_tables() -> None:
    md = render(make_records(noise=0.0))
    # flash 0.2 ms * 16 = 3.2 ms at N=1024; linear 0.4 ms * 4 = 1.6 ms: 2x faster than flash
    assert row_of(md, "Runtime", "linear")[2].endswith("(2.0x)")
    assert row_of(md, "Runtime", "flash")[2].endswith("ms")  # the reference has no ratio
    assert "(1.0×flash)" in row_of(md, "Memory", "linear")[1]
    error = row_of(md, "Error", "linear")
    assert error[1].startswith("0.60") and "skill 0.25" in error[1]
    assert row_of(md, "Error", "uniform attention (floor)")[1:] == ["0.800", "0.800"]
    assert (
        "TFLOP/s" in row_of(md, "Throughput", "flash")[1] and "GB/s" in row_of(md, "Throughput", "flash")[1]
    )


def test_unfitted_error_shown_for_learnable_variants() -> None:
    recs = edit(make_records(noise=0.0), "linear", unfitted_rel_err=0.7)
    assert "unfit 0.70" in row_of(render(recs), "Error", "linear")[1]


def test_efficiency_length_is_interpolated_in_log_space() -> None:
    # linear/flash time ratio = 2 * 256 / N: crosses 1 at N = 512; softmax/flash = 2.5 everywhere
    md = render(make_records(noise=0.0))
    assert row_of(md, "Efficiency length", "linear")[1] == "≈ 512 (between 256 and 1,024)"
    assert row_of(md, "Efficiency length", "softmax")[1].startswith("never in range")


def test_efficiency_table_when_always_faster() -> None:
    recs = edit(make_records(noise=0.0), "linear", time_ms_median=lambda t: t / 10)
    rows = to_dataframe([asdict(r) for r in recs]).to_dict("records")
    table = efficiency_table(rows)
    assert table is not None and "| linear | faster at every measured length (from N=256 or below) |" in table


def test_feature_dimension_table() -> None:
    md = render(with_d_sweep(make_records(noise=0.0)))
    section = md.split("### Error and time vs feature dimension D")[1].split("###")[0]
    header = next(ln for ln in section.splitlines() if ln.startswith("| variant"))
    assert header == "| variant | N | D=16 | D=32 | D=64 |"
    row = row_of(md, "Error and time vs feature dimension D", "performer")
    assert row[1] == "1024"
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


def test_write_report_links_existing_pngs(tmp_path: Path) -> None:
    recs = with_d_sweep(make_records(noise=0.0))
    recs = [
        replace(r, status="oom", reason="out of memory") if r.label == "softmax" and r.seq_len == 1024 else r
        for r in recs
    ]
    run = write_run(tmp_path / "run", recs)
    md = write_report(run).read_text()
    links = re.findall(r"\]\((plots/[^)]+\.png)\)", md)
    kinds = {Path(link).name.split("_fp32")[0] for link in links}
    assert kinds == {"runtime", "memory", "error_vs_d", "frontier"}
    for link in links:
        assert (run / link).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "[^1]: oom: out of memory" in md
