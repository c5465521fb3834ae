"""The kernel report's section on captured model attention: kernel cases per layer, next to the
synthetic regimes of the same run; it appears only when the run has such records and reads the
report's prepared frame (`frame.py`).
"""

from __future__ import annotations

import math

import pandas as pd

from harness.common.numbers import finite, fmt_sig
from harness.measure import seeds

CAPTURED = "captured"


def _regime_order(name: str) -> tuple[int, str]:
    """Captured layers first (by layer number), then the synthetic regimes by name."""
    if name.startswith(CAPTURED + "[layer="):
        return 0, f"{int(name.split('=')[1].rstrip(']')):04d}"
    return 1, name


def _num(x: object) -> float | None:
    return finite(x)


def _cell(value: float | None, digits: int = 3) -> str:
    return "n/a" if value is None else fmt_sig(value, digits)


def _cell2(value: object) -> str:
    return _cell(_num(value), 2)


def _unfit_spread(row: pd.Series) -> str:
    """` ± sd` of the unfitted skill over seeds (the unfitted error's sd over the uniform floor's)."""
    sd, floor = _num(row.get("unfitted_rel_err_sd")), _num(row.get("uniform_rel_err"))
    return f" ± {_cell(sd / floor, 2)}" if sd is not None and floor else ""


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


def _seed_note(rows: pd.DataFrame) -> str:
    """Which configurations ran several seeds: `n seeds: a, b` or that none did."""
    if "n_seeds" not in rows:
        return "none ran more than one"
    n = pd.to_numeric(rows["n_seeds"], errors="coerce")
    many = rows[n > 1]
    if not len(many):
        return "none ran more than one"
    counts = sorted({int(x) for x in n[n > 1]})
    return f"{'/'.join(map(str, counts))} seeds: {', '.join(dict.fromkeys(many['label'].astype(str)))}"


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
                f"{seeds.with_spread(_cell(_num(mine.at[r, 'skill']), 2), mine.loc[r], 'skill', _cell2)} "
                f"({_cell(_num(mine.at[r, 'rel_err']))})"
                if r in mine.index
                else "—"
                for r in regimes
            ]
        )
        if "unfitted_rel_err" in mine and mine["unfitted_rel_err"].notna().any():
            skill_rows.append(
                [f"{label} (unfitted)"]
                + [
                    f"{_cell(_skill(mine.at[r, 'unfitted_rel_err'], mine.at[r, 'uniform_rel_err']), 2)}"
                    f"{_unfit_spread(mine.loc[r])} "
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
        "Skill (rel_err) per configuration and regime; skill = 1 − rel_err / uniform attention's; "
        "`± sd`: the standard deviation over the seeds of a variant with random parameters "
        f"({_seed_note(rows)}); the error in brackets is the mean over them:",
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


def quality_sections(df: pd.DataFrame) -> list[str]:
    """The captured-attention section of the kernel report (when the run has such records)."""
    section = captured_section(df)
    return [""] + section if section else []
