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
from harness.execute.progress import PlainReporter, RichReporter, clock
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


def test_plain_lines_carry_count_elapsed_eta_and_the_case_time() -> None:
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
