"""The report's DataFrame: the records of a run plus every column the tables derive.

`prepare` adds, per case: `ok`; `time` (the median time of an ok case); `noisy` (a time too
noisy, or from too few samples, to carry a claim); `loaded` (a time measured while the host's
load average exceeded its core count, `harness.measure.hygiene.under_load`); `order` (exact
configurations first, by capability, then run order); `perf` and `acc` (the titles of its
performance group, per dtype, causal, mode and any other varying axis, and of its accuracy
group, the same without mode: accuracy does not depend on the pass); the speed baseline at its
group and length (`base_label`, `base_time`, `base_noisy`, `base_loaded`) and `speedup` =
baseline time / time; and `marker`, the footnoted status of a case that did not finish ok. The
baseline is the scenario's `report.baseline` when given and measured there, else the fastest
exact configuration at that length.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from harness.config.blocks import ReportSpec
from harness.kinds.kernel.baseline import matches_baseline
from harness.kinds.kernel.rows import STATUS_TEXT, group_keys, group_order, group_slug, group_title
from harness.measure.hygiene import under_load
from harness.results.markdown import md_cell

NOISY_MARK = "†"
LOADED_MARK = "‡"


def _numeric(df: pd.DataFrame, col: str) -> pd.Series:
    return pd.to_numeric(df[col], errors="coerce") if col in df else pd.Series(np.nan, index=df.index)


def _titles(df: pd.DataFrame, keys: list[str]) -> tuple[pd.Series, dict[str, int]]:
    """Per-row group title, and each title's rank in reading order."""
    rows = df[keys].to_dict("records")
    titles = pd.Series([group_title(k) for k in rows], index=df.index, dtype=object)
    ranked = sorted({group_title(k): group_order(k) for k in rows}.items(), key=lambda kv: kv[1])
    return titles, {title: i for i, (title, _) in enumerate(ranked)}


def _baselines(df: pd.DataFrame, spec: ReportSpec) -> pd.DataFrame:
    """(perf, seq_len) -> base_label, base_time, base_noisy, base_loaded: the named baseline where
    it has an ok time, else the fastest exact configuration."""
    timed = df[df["time"].notna()]
    exact = timed[timed["exact"]]
    chosen = exact.loc[exact.groupby(["perf", "seq_len"])["time"].idxmin()] if len(exact) else exact
    if spec.baseline:
        pairs = zip(timed["label"], timed["variant"], strict=True)
        named = timed[[matches_baseline(lab, var, spec.baseline) for lab, var in pairs]]
        if len(named):
            named = named.loc[named.groupby(["perf", "seq_len"])["time"].idxmin()]
            chosen = pd.concat([named, chosen]).drop_duplicates(["perf", "seq_len"], keep="first")
    cols = {"label": "base_label", "time": "base_time", "noisy": "base_noisy", "loaded": "base_loaded"}
    return chosen[["perf", "seq_len", *cols]].rename(columns=cols)


def _footnotes(df: pd.DataFrame) -> tuple[pd.Series, list[str]]:
    """Status markers like `OOM[^2]` (one footnote per distinct status and reason, numbered in
    reading order) and the footnote lines."""
    bad = df[~df["ok"]].sort_values(["perf_rank", "order", "seq_len"])
    reasons = [md_cell(r or "no reason recorded") for r in bad["reason"].fillna("")]
    reasons = [r if len(r) <= 400 else r[:400] + " …" for r in reasons]
    pairs = list(zip(bad["status"].astype(str), reasons, strict=True))
    ids = {pair: i + 1 for i, pair in enumerate(dict.fromkeys(pairs))}
    marks = pd.Series(
        [f"{STATUS_TEXT.get(s, s)}[^{ids[(s, r)]}]" for s, r in pairs], index=bad.index, dtype=object
    )
    traces: dict[tuple[str, str], str] = {}  # the first traceback tail recorded for each footnote
    column = bad["error_trace"] if "error_trace" in bad else pd.Series([""] * len(bad), index=bad.index)
    for pair, trace in zip(pairs, column.fillna(""), strict=True):
        if trace and pair not in traces:
            traces[pair] = str(trace)
    return marks.reindex(df.index), [_note(n, s, r, traces.get((s, r), "")) for (s, r), n in ids.items()]


def _note(n: int, status: str, reason: str, trace: str) -> str:
    """Footnote `n`; a failed case's traceback tail follows it as an indented code block."""
    if not trace:
        return f"[^{n}]: {status}: {reason}"
    fence = "```"
    lines = [fence, *trace.replace(fence, "'''").splitlines(), fence]
    body = "\n".join(f"    {line}" for line in lines)
    return f"[^{n}]: {status}: {reason} (last lines of the traceback:)\n\n{body}\n"


def prepare(df: pd.DataFrame, spec: ReportSpec | None = None) -> tuple[pd.DataFrame, list[str]]:
    """The report's frame (columns above) and its footnote lines; `df` from `to_dataframe`."""
    spec = spec or ReportSpec()
    df = df.reset_index(drop=True).copy()
    df["seq_len"] = df["seq_len"].astype(int)
    df["ok"] = df["status"].eq("ok")
    df["exact"] = df["exact"].eq(True)
    t = _numeric(df, "time_ms_median")
    df["time"] = t.where(df["ok"] & (t > 0))
    noise, n = _numeric(df, "noise"), _numeric(df, "n_samples")
    df["noisy"] = df["time"].notna() & ((noise > spec.max_noise) | (n < spec.min_samples))
    before, after, cores = _numeric(df, "load_before"), _numeric(df, "load_after"), _numeric(df, "cores")
    loaded = [under_load(*x) for x in zip(before, after, cores, strict=True)]
    df["loaded"] = df["time"].notna() & pd.Series(loaded, index=df.index, dtype=bool)
    first = df.reset_index().groupby("label", sort=False)["index"].min()
    rank = (~df.groupby("label", sort=False)["exact"].any()).astype(int).mul(len(df)).add(first)
    df["order"] = df["label"].map(rank.rank(method="first").astype(int))
    df["perf"], perf_rank = _titles(df, group_keys(df))
    df["perf_slug"] = [group_slug(k) for k in df[group_keys(df)].to_dict("records")]
    df["acc"], acc_rank = _titles(df, group_keys(df, mode=False))
    df["perf_rank"], df["acc_rank"] = df["perf"].map(perf_rank), df["acc"].map(acc_rank)
    df = df.merge(_baselines(df, spec), on=["perf", "seq_len"], how="left")
    df["base_noisy"], df["base_loaded"] = df["base_noisy"].eq(True), df["base_loaded"].eq(True)
    df["speedup"] = df["base_time"] / df["time"]
    df["marker"], notes = _footnotes(df)
    return df, notes


def groups(df: pd.DataFrame, by: str) -> list[tuple[str, pd.DataFrame]]:
    """[(title, rows)] of the `perf` or `acc` groups, in reading order."""
    rank = f"{by}_rank"
    return [(str(g[by].iloc[0]), g) for _, g in df.sort_values(rank).groupby(rank, sort=True)]


def labels_in_order(df: pd.DataFrame) -> list[str]:
    """Configurations of `df`: exact first, then run order."""
    return list(df.sort_values("order").drop_duplicates("label")["label"])


def below_floor(rows: pd.DataFrame) -> pd.Series:
    """Rows whose measured skill is at or below 0: no more accurate than uniform attention (the
    floor), so no candidate for any pick, however fast or small. A row without a skill (accuracy
    not measured) is not below it."""
    return _numeric(rows, "skill").le(0.0)


def pareto(rows: pd.DataFrame) -> pd.DataFrame:
    """Ok configurations better than the uniform floor (`below_floor`) not dominated on (median
    time, rel_err), fastest first: each is more accurate than every faster one."""
    err = _numeric(rows, "rel_err")
    usable = rows["time"].notna() & err.notna() & ~below_floor(rows)
    pts = rows.assign(err=err)[usable].sort_values(["time", "err"])
    best_before = pts["err"].cummin().shift(fill_value=np.inf)
    return pts[pts["err"] < best_before]


def noisy_mark(*flags: bool) -> str:
    """`†` when any time behind a claim was noisy."""
    return NOISY_MARK if any(bool(f) for f in flags) else ""


def loaded_mark(*flags: bool) -> str:
    """`‡` when any time behind a claim was measured under load (load average above the cores)."""
    return LOADED_MARK if any(bool(f) for f in flags) else ""


def marks(noisy: tuple[bool, ...], loaded: tuple[bool, ...]) -> str:
    """`†` and/or `‡` for the times behind a claim (noisy flags, loaded flags)."""
    return noisy_mark(*noisy) + loaded_mark(*loaded)


def load_legend(df: pd.DataFrame) -> str:
    """The `‡` footnote, naming the highest load and the cores it was judged on; "" when no time
    behind a claim was measured under load."""
    loaded = df[df["loaded"]] if "loaded" in df else df.iloc[0:0]
    if not len(loaded):
        return ""
    load = pd.concat([_numeric(loaded, "load_before"), _numeric(loaded, "load_after")]).max()
    cores = sorted({int(c) for c in _numeric(loaded, "cores").dropna()})
    return (
        f"{LOADED_MARK} = measured under load: the host's 1-minute load average was up to {load:.1f} on "
        f"{'/'.join(map(str, cores))} cores while a time behind the claim was measured (above the core "
        "count, other processes competed for the CPU: treat the time as an upper bound)"
    )


def noise_legend(spec: ReportSpec) -> str:
    return (
        f"{NOISY_MARK} = a time behind the claim is noisy: IQR/median above {spec.max_noise:.0%}, or fewer "
        f"than {spec.min_samples} samples"
    )
