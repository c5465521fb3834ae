"""`history publish`: a static, self-contained site; opened in headless Chromium, its charts render.

The Chromium test needs Debian's `chromium` (`.ci/run` installs it) and skips with the reason
where it is absent.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from harness.cli import main as cli_main
from harness.regress import history
from tests.test_compare import make_records, write_run

POINTS, STEP_AT = 10, 7  # linear is 1.4x slower from the 8th run on: a step 3 points old
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
)


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A store of POINTS runs (each with its report.md) with a planted step, published."""
    tmp = tmp_path_factory.mktemp("publish")
    store = tmp / "store"
    for i in range(POINTS):
        recs = []
        for r in make_records(seed=i, run_id=f"run{i:02d}"):
            f = 1.4 if r.label == "linear" and i >= STEP_AT else 1.0
            samples = [f * x for x in r.metrics["time_ms_samples"]]
            recs.append(r.replace(time_ms_samples=samples, time_ms_median=float(np.median(samples))))
        run = write_run(tmp / f"run{i:02d}", recs)
        meta = {"run_id": f"run{i:02d}", "git_sha": f"{i + 1:07x}" * 5}
        meta["started_at"] = f"2026-01-01T00:{i:02d}:00Z"
        (run / "run.json").write_text(json.dumps(meta))
        (run / "report.md").write_text(f"# run {i}\n")
        history.add_run(run, store)
    assert cli_main(["history", "publish", "--store", str(store), "--out", str(tmp / "site")]) == 0
    return tmp / "site"


def charts(page: str) -> int:
    return len(re.findall(r'<div id="chart-\d+"', page))


def test_site_is_self_contained_with_an_index_of_what_regressed(site: Path) -> None:
    index = (site / "index.html").read_text()
    page = (site / "machine-Test_CPU-2t.html").read_text()
    for html in (index, page):
        assert not re.search(r"<script[^>]+src=|<link[^>]+href=\"https?:", html)  # nothing fetched
    assert page.count("plotly.js v") == 1  # the library inlined once per page
    assert charts(page) == 6 * 3  # a chart per case and gated metric: time, rel_err, flops
    failing = re.findall(r'<tr class="fail">.*?</tr>', index)
    assert len(failing) == 2 and all("linear[N=" in row and "time_ms_median" in row for row in failing)
    before, after = (f"{i:07x}" * 5 for i in (STEP_AT, STEP_AT + 1))  # the runs' commits around the step
    assert f"<code>{before[:12]}..{after[:12]}</code>" in index
    assert 'href="machine-Test_CPU-2t.html#linear_N_256_fp32_non-causal_fwd"' in index
    assert page.count('href="reports/run') == POINTS
    assert (site / "reports" / "run03.md").read_text() == "# run 3\n"
    assert page.count("(worse)") == 2  # each step's size on its chart, and a dashed line where it starts
    assert page.count('"line":{"color":"#b00020","dash":"dash"}') == 2


def chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(chromium() is None, reason="no chromium on PATH (.ci/run installs Debian's package)")
def test_published_page_renders_in_headless_chromium(site: Path, tmp_path: Path) -> None:
    page = site / "machine-Test_CPU-2t.html"
    cmd = [chromium(), *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile'}", "--enable-logging=stderr"]
    cmd += ["--v=0", "--virtual-time-budget=30000", "--dump-dom", page.as_uri()]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=240)
    assert res.returncode == 0, res.stderr[-2000:]
    dom = res.stdout
    console = [line for line in res.stderr.splitlines() if ":CONSOLE" in line]
    assert not console, console  # no console message at all, errors included
    containers = re.findall(r'<div id="chart-\d+".*?</svg>', dom, flags=re.S)
    assert len(containers) == charts(page.read_text()) == 18
    for chart in containers:  # each chart drew its series: an SVG line through more than one point
        lines = re.findall(r'class="js-line"[^>]*d="M[\d.,]+L[\d.,]+', chart) + re.findall(
            r'd="M[\d.,]+L[\d.,]+[^"]*"[^>]*class="js-line"', chart
        )
        assert lines, chart[:300]
