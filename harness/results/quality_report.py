"""The report's quality sections: kernel cases on captured model attention (per layer, next to the
synthetic regimes of the same run) and the `e2e` kind's end-to-end fidelity. Each section appears
only when the run has such records; both read the report's prepared frame (`results.frame`).
"""

from __future__ import annotations

import math

import pandas as pd

from harness.measure.metrics import finite, fmt_sig

CAPTURED = "captured"
SELF_TEST_TOL = 1e-5  # exact softmax swapped in must reproduce the original embeddings to this


def _regime_order(name: str) -> tuple[int, str]:
    """Captured layers first (by layer number), then the synthetic regimes by name."""
    if name.startswith(CAPTURED + "[layer="):
        return 0, f"{int(name.split('=')[1].rstrip(']')):04d}"
    return 1, name


def _num(x: object) -> float | None:
    return finite(x)


def _cell(value: float | None, digits: int = 3) -> str:
    return "n/a" if value is None else fmt_sig(value, digits)


def _skill(err: object, floor: object) -> float | None:
    e, f = _num(err), _num(floor)
    return 1 - e / f if e is not None and f else None


def _info(df: pd.DataFrame, key: str) -> str:
    """`info[key]` of the first record that has it ("?" when none does)."""
    for info in df["info"] if "info" in df else ():
        if isinstance(info, dict) and info.get(key):
            return str(info[key])
    return "?"


def _info_list(df: pd.DataFrame, key: str) -> list:
    """`info[key]` (a list) of the first record that has it, else ["?"]."""
    for info in df["info"] if "info" in df else ():
        if isinstance(info, dict) and isinstance(info.get(key), list):
            return info[key]
    return ["?"]


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return out + ["| " + " | ".join(r) + " |" for r in rows]


def captured_section(df: pd.DataFrame) -> list[str]:
    """Entropy per regime, then skill (rel_err) and weights KL per configuration and regime."""
    kernel = df[df["input_dist"].astype(str).str.startswith(CAPTURED) & df["rel_err"].notna()]
    if not len(kernel):
        return []
    rows = df[df["rel_err"].notna()]
    regimes = sorted(rows["input_dist"].astype(str).unique(), key=_regime_order)
    entropy = rows.groupby("input_dist")["softmax_entropy"].mean()
    n = int(rows["seq_len"].iloc[0])
    lines = [
        "## Quality on captured attention",
        "",
        f"q, k, v captured from `{_info(kernel, 'model')}` (weights {_info(kernel, 'weights_sha256')}, "
        f"texts hash {_info(kernel, 'texts_hash')}): every layer, all heads, the key padding mask. "
        "Softmax row entropy of each regime (nats; uniform attention over N keys has ln N = "
        f"{math.log(n):.2f} at N = {n}; captured rows see only their text's real tokens):",
        "",
    ]
    lines += _table(["regime", "row entropy (nats)"], [[r, _cell(_num(entropy.get(r)))] for r in regimes])
    labels = list(dict.fromkeys(rows.sort_values("order")["label"]))
    probed = [r for r in regimes if r.startswith(CAPTURED)]  # weights_kl: captured inputs only
    skill_rows, kl_rows = [], []
    for label in labels:
        mine = rows[rows["label"] == label].drop_duplicates("input_dist").set_index("input_dist")
        skill_rows.append(
            [label]
            + [
                f"{_cell(_num(mine.at[r, 'skill']), 2)} ({_cell(_num(mine.at[r, 'rel_err']))})"
                if r in mine.index
                else "—"
                for r in regimes
            ]
        )
        if "unfitted_rel_err" in mine and mine["unfitted_rel_err"].notna().any():
            skill_rows.append(
                [f"{label} (unfitted)"]
                + [
                    f"{_cell(_skill(mine.at[r, 'unfitted_rel_err'], mine.at[r, 'uniform_rel_err']), 2)} "
                    f"({_cell(_num(mine.at[r, 'unfitted_rel_err']))})"
                    if r in mine.index
                    else "—"
                    for r in regimes
                ]
            )
        if "weights_kl" in mine:
            kl_rows.append([label] + [_cell(_num(mine.at[r, "weights_kl"])) if r in mine.index else "—"
                                      for r in probed])  # fmt: skip
    lines += [
        "",
        "Skill (rel_err) per configuration and regime; skill = 1 − rel_err / uniform attention's:",
        "",
    ]
    lines += _table(["configuration", *regimes], skill_rows)
    if kl_rows:
        lines += [
            "",
            "Row-wise KL(softmax ‖ variant weights), nats, on the captured regimes (the source probes "
            "the weights; n/a: they are not a distribution or the output is not linear in v, "
            "`info.weights_kl` says which):",
            "",
        ]
        lines += _table(["configuration", *probed], kl_rows)
    return lines


def e2e_section(df: pd.DataFrame) -> list[str]:
    """Fidelity per configuration (sorted by variant and D), the uniform floor and the self-test."""
    if not len(df):
        return []
    first = df.groupby("variant")["order"].transform("min")  # each variant's configurations together
    rows = df.assign(_first=first).sort_values(["_first", "feature_dim"], na_position="first")
    table = []
    for _, r in rows.iterrows():
        d = _num(r.get("feature_dim"))
        cells = [_cell(_num(r.get(f"e2e_{m}")), 4) for m in ("cos_mean", "cos_p5", "spearman")]
        status = "" if r["status"] == "ok" else f" ({r['status']}: {str(r['reason'])[:80]})"
        diff, fit_s = _cell(_num(r.get("e2e_max_abs_diff")), 2), _cell(_num(r.get("e2e_fit_s")), 2)
        table.append([str(r["label"]) + status, "—" if d is None else str(int(d)), *cells, diff, fit_s])
    floors = rows[rows["e2e_floor_cos_mean"].notna()] if "e2e_floor_cos_mean" in rows else rows.iloc[:0]
    floor = floors.iloc[0] if len(floors) else {"e2e_floor_cos_mean": None, "e2e_floor_spearman": None}
    table.append(["uniform attention (floor)", "—", _cell(_num(floor["e2e_floor_cos_mean"]), 4), "",
                  _cell(_num(floor["e2e_floor_spearman"]), 4), "", ""])  # fmt: skip
    lines = [
        "## End-to-end fidelity (post-hoc swap, no fine-tuning)",
        "",
        "Every attention layer of the model swapped for the configuration (learnable ones fitted per "
        "layer on captured calibration texts); sentence embeddings (mean pooling, normalized) of the "
        f"evaluation texts against the original model's (real tokens per text, min / mean / max: "
        f"{' / '.join(map(str, _info_list(df, 'real_tokens')))}). D = feature dimension; a variant "
        "without key-padding-mask support runs each text alone at its own length.",
        "",
    ]
    lines += _table(
        ["configuration", "D", "cosine mean ↑", "cosine p5 ↑", "Spearman ↑", "max |Δ| ↓", "fit s"], table
    )
    exact = rows[rows["exact"] & rows["e2e_max_abs_diff"].notna()]
    for _, r in exact.iterrows():
        diff = float(r["e2e_max_abs_diff"])
        verdict = "pass" if diff <= SELF_TEST_TOL else "FAIL"
        lines += ["", f"Exact-attention self-test (`{r['label']}`): max |Δ embedding| = {diff:.2g} — "
                  f"{verdict} (≤ {SELF_TEST_TOL:g})"]  # fmt: skip
    return lines


def is_e2e(df: pd.DataFrame, scenario: dict | None) -> pd.Series:
    """Which rows are e2e records: every row of a `kind: e2e` scenario (without the scenario, the
    rows that carry the uniform floor)."""
    if scenario and scenario.get("kind"):
        return pd.Series(scenario["kind"] == "e2e", index=df.index)
    if "e2e_floor_cos_mean" not in df:
        return pd.Series(False, index=df.index)
    return df["e2e_floor_cos_mean"].notna()


def quality_sections(df: pd.DataFrame) -> list[str]:
    """The captured-attention section of the kernel report (when the run has such records)."""
    section = captured_section(df)
    return [""] + section if section else []
