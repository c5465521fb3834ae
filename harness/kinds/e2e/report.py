"""The `e2e` kind's report section: fidelity per configuration, the uniform floor, the self-test."""

from __future__ import annotations

import pandas as pd

from harness.common.numbers import finite, fmt_sig
from harness.measure import seeds
from harness.results.markdown import md_table

SELF_TEST_TOL = 1e-5  # exact softmax swapped in must reproduce the original embeddings to this


def _num(x: object) -> float | None:
    return finite(x)


def _cell(value: float | None, digits: int = 3) -> str:
    return "n/a" if value is None else fmt_sig(value, digits)


def _info_list(df: pd.DataFrame, key: str) -> list:
    """`info[key]` (a list) of the first record that has it, else ["?"]."""
    for info in df["info"] if "info" in df else ():
        if isinstance(info, dict) and isinstance(info.get(key), list):
            return info[key]
    return ["?"]


def _cell2(value: object) -> str:
    return _cell(_num(value), 2)


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    return md_table(header, rows)


def e2e_section(df: pd.DataFrame) -> list[str]:
    """Fidelity per configuration (sorted by variant and D), the uniform floor and the self-test."""
    if not len(df):
        return []
    df = df.reset_index(drop=True)
    df = df.assign(order=df.groupby("label", sort=False).ngroup(), exact=df["exact"].eq(True))
    first = df.groupby("variant")["order"].transform("min")  # each variant's configurations together
    rows = df.assign(_first=first).sort_values(["_first", "feature_dim"], na_position="first")
    table = []
    for _, r in rows.iterrows():
        d = _num(r.get("feature_dim"))
        cells = [
            seeds.with_spread(_cell(_num(r.get(f"e2e_{m}")), 4), r, f"e2e_{m}", _cell2)
            for m in ("cos_mean", "cos_p5", "spearman")
        ]
        status = "" if r["status"] == "ok" else f" ({r['status']}: {str(r['reason'])[:80]})"
        diff, fit_s = _cell(_num(r.get("e2e_max_abs_diff")), 2), _cell(_num(r.get("e2e_fit_s")), 2)
        n = _num(r.get("n_seeds"))
        drawn = "1" if n is None else str(int(n))
        dim = "—" if d is None else str(int(d))
        table.append([str(r["label"]) + status, dim, drawn, *cells, diff, fit_s])
    floors = rows[rows["e2e_floor_cos_mean"].notna()] if "e2e_floor_cos_mean" in rows else rows.iloc[:0]
    floor = floors.iloc[0] if len(floors) else {"e2e_floor_cos_mean": None, "e2e_floor_spearman": None}
    table.append(["uniform attention (floor)", "—", "", _cell(_num(floor["e2e_floor_cos_mean"]), 4), "",
                  _cell(_num(floor["e2e_floor_spearman"]), 4), "", ""])  # fmt: skip
    lines = [
        "## End-to-end fidelity (post-hoc swap, no fine-tuning)",
        "",
        "Every attention layer of the model swapped for the configuration (learnable ones fitted per "
        "layer on captured calibration texts); sentence embeddings (mean pooling, normalized) of the "
        f"evaluation texts against the original model's (real tokens per text, min / mean / max: "
        f"{' / '.join(map(str, _info_list(df, 'real_tokens')))}). D = feature dimension; a variant "
        "without key-padding-mask support runs each text alone at its own length. seeds: draws of a "
        "variant whose parameters are random (features, a learnable map's initialisation and fit); "
        "its figures are the mean over them, `± sd` the standard deviation (max |Δ| and fit s: the "
        "mean); 1: one draw, or a deterministic variant.",
        "",
    ]
    lines += _table(
        ["configuration", "D", "seeds", "cosine mean ↑", "cosine p5 ↑", "Spearman ↑", "max |Δ| ↓", "fit s"],
        table,
    )
    exact = rows[rows["exact"] & rows["e2e_max_abs_diff"].notna()]
    for _, r in exact.iterrows():
        diff = float(r["e2e_max_abs_diff"])
        verdict = "pass" if diff <= SELF_TEST_TOL else "FAIL"
        lines += ["", f"Exact-attention self-test (`{r['label']}`): max |Δ embedding| = {diff:.2g} — "
                  f"{verdict} (≤ {SELF_TEST_TOL:g})"]  # fmt: skip
    return lines
