"""`history publish --store DIR --out SITE`: a static, self-contained site of the history store.

SITE/index.html lists the machines and what regressed (every confirmed step of `history check`,
the failing ones first, each linking to its chart); SITE/machine-<m>.html has, per case, a chart
per gated metric over the stored runs in commit order: the value (median time with its p20-p80
range as error bars), change points as dashed lines with the step's size, a hover with the
commit, the run's date and the value, and a click that opens the run's report; below, every run
with a link to its report. Reports: a run added with `--report-url` links there; otherwise its
RUN_DIR/report.md, when it still exists, is copied to SITE/reports/ (the site keeps working
when the run directory is gone).

Charts are drawn by plotly (a maintained plotting library whose figures are standalone HTML with
hover, zoom and click built in). No network at view time: plotly.js is inlined once per page in
<head> (`plotly.offline.get_plotlyjs()`, ~4.7 MB), every figure refers to it. The alternatives:
bokeh's INLINE resources work the same way but its click-to-open needs a CustomJS callback per
glyph; matplotlib SVG has no hover without editing the SVG's XML by hand.
"""

from __future__ import annotations

import html
import json
import shutil
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd

from harness.common.files import ensure_dir, write_atomic
from harness.plugins.metrics import metric
from harness.regress.history import slug
from harness.regress.history_check import CheckResult, Step, series_name

STYLE = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 1.5em auto; max-width: 1100px; color: #222; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; margin-top: 2em; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; margin: 0.5em 0; }
td, th { padding: 3px 8px; border-bottom: 1px solid #eee; text-align: left; font-size: 13px; }
.worse { color: #b00020; font-weight: 600; } .better { color: #1b7a2f; }
.charts { display: flex; flex-wrap: wrap; gap: 4px; }
.fail { background: #fde7ea; } code { font-size: 12px; }
"""


def _page(title: str, body: str, plotly_js: str = "") -> str:
    script = f'<script type="text/javascript">{plotly_js}</script>' if plotly_js else ""
    return (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
        f"<style>{STYLE}</style>{script}</head><body>{body}</body></html>\n"
    )


def _report_links(df: pd.DataFrame, out: Path) -> dict[str, str]:
    """run_id -> the link to its report (its --report-url, or a copy under SITE/reports/, or '')."""
    links = {}
    for run in df.drop_duplicates("run_id").itertuples():
        url = str(getattr(run, "report_url", "") or "")
        src = Path(str(getattr(run, "run_dir", "") or "")) / "report.md"
        if not url and str(getattr(run, "run_dir", "") or "") and src.is_file():
            dest = ensure_dir(out / "reports") / f"{slug(str(run.run_id))}.md"
            shutil.copyfile(src, dest)
            url = f"reports/{dest.name}"
        links[str(run.run_id)] = url
    return links


def _step_line(s: Step) -> str:
    way = "worse" if s.worse else "better"
    return f"{s.ratio:.3f}× ({way})"


def _figure(m_name: str, rows: pd.DataFrame, steps: list[Step], links: dict[str, str], ticks: pd.DataFrame):
    """One plotly figure: metric `m_name` of one case over the points, with its steps marked."""
    import plotly.graph_objects as go

    m = metric(m_name)
    scale = m.scale or 1.0
    s = rows.sort_values("point")
    y = s[m_name].astype(float) * scale
    date = s["commit_time"].where(s["commit_time"] != "", s["run_time"]).astype(str).str[:19]
    reports = [links.get(str(r), "") for r in s["run_id"]]
    custom = list(zip(s["commit"].str[:12], date, s["run_id"], reports, strict=True))
    error = None
    if m_name == "time_ms_median" and s["time_ms_p20"].notna().any():
        error = {
            "type": "data",
            "symmetric": False,
            "array": (s["time_ms_p80"] - s["time_ms_median"]).clip(lower=0).tolist(),
            "arrayminus": (s["time_ms_median"] - s["time_ms_p20"]).clip(lower=0).tolist(),
            "thickness": 1,
            "width": 0,
        }
    unit = m.shown_unit
    fig = go.Figure(
        go.Scatter(
            x=s["point"],
            y=y,
            mode="lines+markers",
            error_y=error,
            customdata=custom,
            hovertemplate=(
                "commit %{customdata[0]}<br>%{customdata[1]}<br>"
                f"{html.escape(m.title or m_name)}: %{{y:.4g}} {unit}<br>"
                "run %{customdata[2]}<extra></extra>"
            ),
            name=m_name,
        )
    )
    for st in steps:
        color = "#b00020" if st.worse else "#1b7a2f"
        fig.add_vline(x=st.start - 0.5, line_dash="dash", line_color=color)
        fig.add_annotation(
            x=st.start - 0.5, y=1, yref="paper", text=_step_line(st), showarrow=False, font_color=color,
            xanchor="left", yanchor="top",
        )  # fmt: skip
    fig.update_layout(
        margin={"l": 55, "r": 10, "t": 30, "b": 70},
        height=280,
        width=360,  # three charts (the gated metrics of a case) side by side
        title={"text": f"{html.escape(m.title or m_name)} ({unit or '1'})", "font": {"size": 13}},
        xaxis={
            "tickmode": "array",
            "tickvals": ticks["point"].tolist(),
            "ticktext": ticks["commit"].str[:8].tolist(),
            "tickangle": -60,
            "title": "commit",
        },
        showlegend=False,
    )
    if m_name.startswith("time") or (m_name == "rel_err" and (y > 0).all()):
        fig.update_yaxes(type="log")  # times on a loaded machine span decades; exact rel_err is ~1e-7
    return fig


CLICK = (
    "var el = document.getElementById('{plot_id}'); el.on('plotly_click', function (d) {{ "
    "var url = d.points[0].customdata[3]; if (url) {{ window.open(url, '_blank'); }} }});"
)


def machine_page(
    machine: str, df: pd.DataFrame, result: CheckResult, links: dict[str, str], plotly_js: str
) -> str:
    """The HTML of one machine's page."""
    rows = df[(df["machine"] == machine) & (df["status"] == "ok")]
    ticks = df[df["machine"] == machine].drop_duplicates("point").sort_values("point")
    steps = [s for s in result.steps if s.machine == machine]
    parts = [f"<h1>{html.escape(machine)}</h1>", '<p><a href="index.html">all machines</a></p>']
    n = 0
    for _, case in rows.groupby("case_id", sort=False):
        name = series_name(case.iloc[0])
        parts.append(f'<h2 id="{html.escape(slug(name))}">{html.escape(name)}</h2><div class="charts">')
        for m_name in result.metrics:
            if m_name not in case or not case[m_name].notna().any():
                continue
            mine = [s for s in steps if s.case == name and s.metric == m_name]
            fig = _figure(m_name, case, mine, links, ticks)
            parts.append(
                fig.to_html(
                    full_html=False,
                    include_plotlyjs=False,
                    div_id=f"chart-{n}",
                    post_script=CLICK,
                    config={"displaylogo": False, "displayModeBar": False},
                )
            )
            n += 1
    parts.append(
        "<h2>Runs</h2><table><tr><th>#</th><th>commit</th><th>date</th><th>run</th><th>report</th></tr>"
    )
    for t in ticks.itertuples():
        link = links.get(str(t.run_id), "")
        cell = f'<a href="{html.escape(link)}">report</a>' if link else "—"
        date = t.commit_time or t.run_time
        parts.append(
            f"<tr><td>{t.point}</td><td><code>{html.escape(str(t.commit)[:12])}</code></td>"
            f"<td>{html.escape(str(date)[:19])}</td><td>{html.escape(str(t.run_id))}</td><td>{cell}</td></tr>"
        )
    parts.append("</table>")
    return _page(f"attnbench history: {machine}", "\n".join(parts), plotly_js)


def index_page(df: pd.DataFrame, result: CheckResult, pages: dict[str, str]) -> str:
    """The HTML of the index: machines, then what regressed (failing first), then other steps."""
    now = datetime.now(timezone.utc).isoformat(timespec="seconds")
    parts = [
        "<h1>attnbench history</h1>",
        f"<p>{df['point'].nunique()} runs, {df['case_id'].nunique()} cases; published {now}. "
        f"Checked: {', '.join(result.metrics)} (threshold and rules: <code>history check</code>).</p>",
        "<h2>Machines</h2><ul>",
    ]
    for machine, page in pages.items():
        runs = df[df["machine"] == machine]["run_id"].nunique()
        parts.append(f'<li><a href="{page}">{html.escape(machine)}</a> ({runs} runs)</li>')
    parts.append("</ul>")
    failing = result.failing
    parts.append(f"<h2>What regressed ({len(failing)} at the latest commits)</h2>")
    if not result.steps:
        parts.append("<p>No confirmed step in any series.</p>")
    else:
        parts.append("<table><tr><th></th><th>machine</th><th>case</th><th>metric</th><th>change</th>")
        parts.append("<th>commits</th><th>confidence</th></tr>")
        for s in sorted(result.steps, key=lambda s: (s not in failing, not s.worse, s.machine, s.case)):
            mark = "FAIL" if s in failing else ("worse" if s.worse else "better")
            target = f"{pages.get(s.machine, '')}#{slug(s.case)}"
            row, cell = "fail" if s in failing else "", "worse" if s.worse else "better"
            parts.append(
                f'<tr class="{row}"><td class="{cell}">{mark}</td>'
                f"<td>{html.escape(s.machine)}</td>"
                f'<td><a href="{html.escape(target)}">{html.escape(s.case)}</a></td><td>{s.metric}</td>'
                f"<td>{_step_line(s)} ({s.before:.4g} → {s.after:.4g})</td>"
                f"<td><code>{html.escape(s.commit_before[:12])}..{html.escape(s.commit[:12])}</code></td>"
                f"<td>{s.z:.1f} s.e., p = {s.p_value:.1g}</td></tr>"
            )
        parts.append("</table>")
    return _page("attnbench history", "\n".join(parts))


def publish(df: pd.DataFrame, result: CheckResult, out: Path) -> list[Path]:
    """Write the site into `out` (created; pages replaced); returns the pages written."""
    from plotly.offline import get_plotlyjs

    out = ensure_dir(Path(out))
    links = _report_links(df, out)
    plotly_js = get_plotlyjs()
    pages = {m: f"machine-{slug(m)}.html" for m in sorted(set(df["machine"]))}
    written = []
    for machine, page in pages.items():
        write_atomic(out / page, machine_page(machine, df, result, links, plotly_js))
        written.append(out / page)
    write_atomic(out / "index.html", index_page(df, result, pages))
    write_atomic(out / "steps.json", json.dumps([s.__dict__ for s in result.steps], indent=1, default=str))
    return [out / "index.html", *written]
