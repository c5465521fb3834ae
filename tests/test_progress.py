"""Output that reads at a glance: progress at 80 columns and in logs, the end-of-run digest table,
the one-slide plot, and `ab` relaying each round's progress."""

from __future__ import annotations

import io
import re
import sys
from pathlib import Path

import pandas as pd
from rich.console import Console, Group

from harness.config.scenario import load_scenario
from harness.config.sweep import expand
from harness.execute.progress import PlainReporter, RichReporter, clock, cut, what
from harness.kinds.kernel.digest import digest, digest_table
from harness.kinds.kernel.slide import slide_plot
from harness.regress.ab import _run_relaying
from harness.results.record_lines import read_records
from harness.results.records import Record, to_dataframe

ROOT = Path(__file__).resolve().parents[1]
ODD = ROOT / "results" / "cpu-odd" / "records.jsonl"  # a committed run: 14 configurations, N 63 and 1000


def cases_and_record():
    cases = expand(load_scenario("quick"), "cpu")
    record = Record.from_dict(next(iter(read_records(ODD))))
    return cases, record


def test_clock() -> None:
    assert [clock(s) for s in (0, 7.4, 754, 3723)] == ["0:00", "0:07", "12:34", "1:02:03"]


def test_plain_lines_carry_count_elapsed_eta_and_the_case_time(monkeypatch) -> None:
    monkeypatch.setenv("COLUMNS", "200")  # wide: nothing cut
    cases, record = cases_and_record()
    now = [100.0]
    out = io.StringIO()
    rep = PlainReporter(stream=out, now=lambda: now[0])
    rep.start(total=len(cases), already_done=0)
    for i, case in enumerate(cases[:2]):
        rep.case_started(case)
        now[0] += 3.0 + i  # 3 s, then 4 s
        rep.case_finished(case, record)
    lines = out.getvalue().splitlines()
    n = len(cases)
    assert lines[0].startswith(f"[1/{n} 0:03 eta {clock(3.0 * (n - 1))}] softmax N=512")
    assert lines[1].startswith(f"[2/{n} 0:07 eta {clock(3.5 * (n - 2))}] ")
    assert lines[0].endswith("(3.0 s)") and lines[1].endswith("(4.0 s)")
    assert " gaussian: ok " in lines[0]  # the input regime is named


def test_plain_lines_are_cut_to_the_terminal_width_never_wrapped(monkeypatch) -> None:
    cases, record = cases_and_record()
    out = io.StringIO()
    rep = PlainReporter(stream=out, now=lambda: 0.0)
    rep.start(total=len(cases), already_done=0)
    for width in (80, 30):
        monkeypatch.setenv("COLUMNS", str(width))
        rep.case_started(cases[0])
        rep.case_finished(cases[0], record)
    narrow, tiny = out.getvalue().splitlines()
    assert len(narrow) == 80 and narrow.startswith(f"[1/{len(cases)} 0:00 eta 0:00] softmax N=")
    assert "… gaussian: ok " in narrow and narrow.endswith("(0.0 s)")  # the description's inside gave way
    assert len(tiny) == 30 and tiny.startswith(f"[2/{len(cases)}") and tiny.endswith("…")
    assert cut("[1/2] ", "softmax N=64", ": ok", 80) == "[1/2] softmax N=64: ok"
    long_tail = ": ok accuracy=0.023 (no recall learned) (0.0 s)"  # too little room: the label stays
    assert cut("[5/6] ", "performer(features=32) pairs=4 N=32 B=8 H=2", long_tail, 60) == (
        "[5/6] performer(features=32)…: ok accuracy=0.023 (no recall…"
    )


def test_progress_names_the_captured_layer() -> None:
    cases = expand(load_scenario("quality_minilm"), "cpu")
    regimes = {what(c).rsplit(" ", 1)[1] for c in cases}
    assert {"captured[layer=0]", "captured[layer=5]"} <= regimes
    e2e = {what(c).rsplit(" ", 1)[1] for c in expand(load_scenario("quality_minilm_e2e"), "cpu")}
    assert e2e == {"captured"}  # e2e swaps every layer: no layer is named


def test_rich_bar_keeps_count_elapsed_and_eta_at_80_columns() -> None:
    cases, record = cases_and_record()
    buf = io.StringIO()
    console = Console(file=buf, width=80, force_terminal=True, color_system=None, legacy_windows=False)
    rep = RichReporter(console=console)
    rep.start(total=len(cases), already_done=0)
    rep.case_started(cases[0])
    rep.case_finished(cases[0], record)
    rep.case_started(cases[1])
    rows = rep.progress.get_renderables()
    text = io.StringIO()
    Console(file=text, width=80, color_system=None).print(Group(*rows))
    lines = [line for line in text.getvalue().splitlines() if line.strip()]
    rep.stop()
    assert all(len(line) <= 80 for line in lines), lines
    bar = lines[0]
    assert f"1/{len(cases)}" in bar and re.search(r"\d:\d\d:\d\d", bar) and "eta" in bar, bar
    assert lines[1].startswith("now:  softmax N=2048") and lines[2].startswith("last: softmax N=512")


def test_digest_marks_the_best_of_each_column_at_the_longest_length() -> None:
    rows, where = digest(to_dataframe(read_records(ODD)))
    assert where == "fp32, non-causal, fwd"
    assert (rows["seq_len"] == 1000).all() and rows["label"].is_unique
    ok = rows.dropna(subset=["time"])
    assert rows.loc[rows["best_time"], "time"].item() == ok["time"].min()
    assert rows.loc[rows["best_peak"], "peak"].item() == rows["peak"].min()
    approx = rows[~rows["exact"]]
    assert rows.loc[rows["best_skill"], "skill"].item() == approx["skill"].max()
    assert not rows.loc[rows["best_skill"], "exact"].item()  # exact ones have skill 1 by construction
    text = io.StringIO()
    Console(file=text, width=80, color_system=None).print(digest_table(rows, where))
    lines = text.getvalue().splitlines()
    assert all(len(line) <= 80 for line in lines)
    assert sum(line.count(" *") for line in lines if "│" in line) == 3  # rows, not the caption


def test_digest_of_a_run_with_nothing_ok_is_empty() -> None:
    df = to_dataframe(read_records(ODD))
    rows, where = digest(df.assign(status="error"))
    assert rows.empty and where == ""


def test_slide_plot_has_a_panel_per_input_regime(tmp_path: Path) -> None:
    df = to_dataframe(read_records(ODD))
    local = df.assign(input_dist="local", skill=pd.to_numeric(df["skill"]) / 2)
    path = slide_plot(pd.concat([df, local], ignore_index=True), tmp_path)
    assert path == tmp_path / "slide.png" and path.stat().st_size > 10_000
    assert slide_plot(df.head(1), tmp_path / "none") is None


def test_ab_relays_each_rounds_progress_lines(capsys) -> None:
    script = "print('[1/2 0:01 eta 0:01] softmax N=64: ok 1 ms'); print('digest table'); print('[2/2] x: ok')"
    code = _run_relaying([sys.executable, "-c", script], ROOT, "ab: round 1/3 base")
    err = capsys.readouterr().err.splitlines()
    assert code == 0
    assert err[0] == "ab: round 1/3 base: [1/2 0:01 eta 0:01] softmax N=64: ok 1 ms"
    assert err[1] == "ab: round 1/3 base: [2/2] x: ok"
    assert err[2].startswith("ab: round 1/3 base: done in ") and err[2].endswith("(exit 0)")


def _render(table, width: int = 80) -> list[str]:
    text = io.StringIO()
    Console(file=text, width=width, color_system=None).print(table)
    return text.getvalue().splitlines()


def test_kernel_digest_tells_captured_layers_apart_and_skips_the_floor_for_best() -> None:
    df = to_dataframe(read_records(ODD))
    df = df[df["seq_len"] == 1000]
    layers = pd.concat([df.assign(input_dist=f"captured[layer={i}]") for i in (0, 3)], ignore_index=True)
    fastest = pd.to_numeric(layers["time_ms_median"]).idxmin()
    layers.loc[fastest, ["time_ms_median", "skill"]] = [0.1, -7.99]  # fastest, no better than uniform
    rows, where = digest(layers)
    assert len(rows) == 2 * len(digest(df)[0])  # one row per configuration and layer
    assert rows["time"].min() == 0.1 and rows.loc[rows["best_time"], "skill"].gt(0).all()
    assert rows.loc[rows["best_time"], "time"].min() == rows.loc[rows["skill"] > 0, "time"].min()
    lines = _render(digest_table(rows, where))
    assert all(len(line) <= 80 for line in lines)
    text = " ".join(line.split("│")[2].strip() for line in lines if line.count("│") > 2)
    header = next(line for line in lines if "┃ configuration" in line)
    assert "peak" in header and "peak" not in "".join(_render(digest_table(rows.assign(peak=None), where)))
    assert text.count("captured layer=0") == text.count("captured layer=3") == len(rows) // 2


def test_generic_digest_shows_each_kinds_headline_and_the_regimes_that_vary() -> None:
    from harness.kinds.e2e.kind import E2EKind
    from harness.kinds.mqar.kind import MQARKind
    from harness.results.digest import headline_table

    e2e = pd.DataFrame(
        {"status": "ok", "label": ["softmax", "luna[chunked](m=8)"], "input_dist": "captured[layer=0]",
         "seq_len": 512, "e2e_cos_mean": [1.0, 0.8526], "e2e_spearman": [1.0, 0.8046],
         "e2e_floor_cos_mean": 0.4745}
    )  # fmt: skip
    lines = _render(headline_table(e2e, E2EKind()))
    assert all(len(line) <= 80 for line in lines)
    row = next(line for line in lines if "luna[chunked](m=8)" in line)  # brackets kept, never cut
    assert "0.8526" in row and "0.8046" in row and "0.4745" in row and "n/a" not in row
    assert not any("captured" in line for line in lines)  # one regime: no inputs column
    mqar = pd.DataFrame(
        {"status": "ok", "label": ["softmax"] * 4, "seq_len": 32, "task.pairs": [8, 4, 8, 4],
         "input_dist": ["captured[layer=3]"] * 2 + ["captured[layer=4]"] * 2,
         "mqar_accuracy": [0.9, 1.0, 0.5, 0.6], "mqar_copy_baseline": [0.125, 0.25, 0.125, 0.25]}
    )  # fmt: skip
    lines = [line for line in _render(headline_table(mqar, MQARKind())) if "softmax" in line]
    assert [line.split("│")[2].strip() + " " + line.split("│")[3].strip() for line in lines] == [
        "captured layer=3 4",
        "captured layer=3 8",
        "captured layer=4 4",
        "captured layer=4 8",
    ]
