"""plot_regimes: one error-vs-N PNG per input regime, one line per approximate configuration plus
the uniform floor; exact configurations left out; a configuration without an ok point listed."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from harness.kinds.kernel.plot_regimes import FLOOR_LABEL, regime_figure, regime_lines, regime_plots


def _rec(label: str, dist: str, n: int, err: float | None, status: str = "ok", exact: bool = False) -> dict:
    return {
        "label": label,
        "input_dist": dist,
        "seq_len": n,
        "dtype": "fp32",
        "causal": False,
        "mode": "fwd",
        "status": status,
        "exact": exact,
        "rel_err": err,
        "uniform_rel_err": 0.8 if dist == "gaussian" else 0.9,
    }


def _records() -> pd.DataFrame:
    rows = []
    for dist in ("gaussian", "local"):
        for n in (1024, 2048, 4096):
            rows += [
                _rec("softmax", dist, n, 1e-7, exact=True),
                _rec("linear", dist, n, 0.7),
                _rec("window(window=32)", dist, n, 0.01 * n / 1024),
                _rec("deltanet", dist, n, None, status="skipped"),
            ]
    return pd.DataFrame(rows)


def test_one_png_per_regime_listed_in_the_report(tmp_path: Path) -> None:
    made = regime_plots(_records(), tmp_path)
    assert sorted(made) == ["regime:gaussian:fp32_full", "regime:local:fp32_full"]
    assert all(p.is_file() and p.stat().st_size > 1000 for p in made.values())
    assert made["regime:local:fp32_full"].name == "error_vs_n_local_fp32_full.png"
    lines = regime_lines({k: f"plots/{p.name}" for k, p in made.items()})
    assert "![error vs N, inputs local, fp32_full](plots/error_vs_n_local_fp32_full.png)" in lines


def test_one_line_per_approximate_configuration_and_the_floor() -> None:
    df = _records()
    fig = regime_figure(df[df["input_dist"] == "local"].to_dict("records"), "t")
    assert fig is not None
    lines = {ln.get_label(): ln for ln in fig.axes[0].get_lines()}
    assert set(lines) == {"linear", "window(window=32)", FLOOR_LABEL, "deltanet: not plotted (skipped)"}
    assert list(lines["window(window=32)"].get_xdata()) == [1024, 2048, 4096]
    assert list(lines["window(window=32)"].get_ydata()) == [0.01, 0.02, 0.04]
    assert list(lines[FLOOR_LABEL].get_ydata()) == [0.9, 0.9, 0.9]
    assert fig.axes[0].get_yscale() == "log"  # 0.01 .. 0.9 spans more than a factor 3


def test_nothing_to_draw_without_an_approximate_error(tmp_path: Path) -> None:
    df = pd.DataFrame([_rec("softmax", "gaussian", 1024, 1e-7, exact=True)])
    assert regime_plots(df, tmp_path) == {}
    assert regime_lines({}) == []
