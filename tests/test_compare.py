"""`compare` on synthetic run directories built with harness.results.records, and its Markdown."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from harness.regress import compare, compare_markdown
from harness.results.record_lines import read_records
from harness.results.records import Record, append_record

REPO = Path(__file__).resolve().parent.parent
LENGTHS = (256, 1024)
VARIANTS = {  # label -> (variant, impl, feature_dim, time at N=256 in ms, exponent of N, rel_err)
    "softmax": ("softmax", "torch", None, 0.5, 2.0, 3e-7),
    "flash": ("flash", "sdpa", None, 0.2, 2.0, 3e-7),
    "linear": ("linear", "torch", 64, 0.4, 1.0, 0.6),
}
CPU_ENV = {"cpu": "Test CPU", "gpu": None, "gpu_driver": None, "cuda": None, "torch": "2.13.0", "threads": 2}


def make_records(
    seed: int = 0, n_samples: int = 20, noise: float = 0.02, device: str = "cpu", run_id: str = "run"
) -> list[Record]:
    """One ok record per (label, N) of VARIANTS x LENGTHS, fwd fp32 non-causal, seeded samples."""
    rng = np.random.default_rng(seed)
    out = []
    for label, (variant, impl, fdim, t0, expo, err) in VARIANTS.items():
        for n in LENGTHS:
            t = t0 * (n / LENGTHS[0]) ** expo
            samples = (t * (1.0 + noise * rng.standard_normal(n_samples))).tolist()
            out.append(
                Record(
                    case_id=f"{label}-{n}",
                    run_id=run_id,
                    scenario="synthetic",
                    scenario_version=1,
                    variant=variant,
                    variant_version=1,
                    impl=impl,
                    params={},
                    label=label,
                    config_key=f"{label}-cfg",
                    batch=1,
                    heads=2,
                    seq_len=n,
                    head_dim=32,
                    feature_dim=fdim,
                    dtype="fp32",
                    device=device,
                    causal=False,
                    mode="fwd",
                    metrics={
                        "time_ms_median": float(np.median(samples)),
                        "time_ms_p20": float(np.percentile(samples, 20)),
                        "time_ms_p80": float(np.percentile(samples, 80)),
                        "time_ms_samples": samples,
                        "n_samples": n_samples,
                        "noise": noise,
                        "peak_mem_bytes": (4 << 20) * n // LENGTHS[0],
                        "extra_mem_bytes": (1 << 20) * n // LENGTHS[0],
                        "rel_err": err,
                        "uniform_rel_err": 0.8,
                        "skill": 1 - err / 0.8,
                        "flops": 4.0 * n * n * 32,
                        "bytes_moved": 16.0 * n * 32,
                    },
                )
            )
    return out


def write_run(path: Path, records: list[Record], env: dict | None = None) -> Path:
    """A run directory: records.jsonl (appended with the real helper) and env.json."""
    path.mkdir(parents=True, exist_ok=True)
    for rec in records:
        append_record(path / "records.jsonl", rec)
    (path / "env.json").write_text(json.dumps(CPU_ENV if env is None else env))
    return path


def edit(records: list[Record], label: str, **changes) -> list[Record]:
    """Records with `changes` applied to every record of `label`; callables map the old value."""
    out = []
    for r in records:
        if r.label == label:
            r = r.replace(**{k: v(r.flat()[k]) if callable(v) else v for k, v in changes.items()})
        out.append(r)
    return out


def run_compare(tmp_path: Path, base: list[Record], head: list[Record], env=None, **kw):
    b = write_run(tmp_path / "base", base)
    h = write_run(tmp_path / "head", head, env)
    return compare.compare_runs(b, h, n_boot=400, **kw)


def verdicts(result: compare.ComparisonResult) -> dict[str, str]:
    return {c.case_id: c.verdict for c in result.cases}


def test_same_run_is_exit_0_without_regression(tmp_path: Path) -> None:
    recs = make_records()
    result = run_compare(tmp_path, recs, recs)
    assert compare.exit_code(result) == 0
    assert set(verdicts(result).values()) == {compare.SAME}
    assert not result.env_warnings


def test_aa_runs_with_fresh_noise_do_not_regress(tmp_path: Path) -> None:
    result = run_compare(tmp_path, make_records(seed=1), make_records(seed=2))
    assert compare.exit_code(result) == 0
    assert compare.REGRESSED not in verdicts(result).values()


def test_slower_variant_is_regressed_and_named(tmp_path: Path) -> None:
    base = make_records(seed=1)
    head = edit(make_records(seed=2), "linear", time_ms_samples=lambda s: [1.5 * x for x in s])
    result = run_compare(tmp_path, base, head)
    assert compare.exit_code(result) == 1
    assert {c.label for c in result.regressions} == {"linear"}
    assert all(c.finding("time_ms_median").ratio == pytest.approx(1.5, rel=0.05) for c in result.regressions)
    times = {v.label: v.geomean for v in result.variants}
    assert times["linear"] == pytest.approx(1.5, rel=0.05)
    assert times["flash"] == pytest.approx(1.0, abs=0.03)
    md = compare_markdown.render_verdict_markdown(result)
    regressions = md.split("### Regressions")[1].split("<details>")[0]
    assert "| linear |" in regressions and "| flash |" not in regressions


def test_faster_variant_is_improved_exit_0(tmp_path: Path) -> None:
    head = edit(make_records(seed=2), "flash", time_ms_samples=lambda s: [0.8 * x for x in s])
    result = run_compare(tmp_path, make_records(seed=1), head)
    assert compare.exit_code(result) == 0
    assert {c.label for c in result.by_verdict(compare.IMPROVED)} == {"flash"}
    assert result.verdict == compare.IMPROVED


def test_time_not_gated_for_cpu_ci(tmp_path: Path) -> None:
    head = edit(make_records(seed=2), "linear", time_ms_samples=lambda s: [1.5 * x for x in s])
    result = run_compare(tmp_path, make_records(seed=1), head, gate_time=False)
    assert compare.exit_code(result) == 0
    case = next(c for c in result.cases if c.label == "linear")
    assert case.verdict == compare.SAME
    time = case.finding("time_ms_median")
    assert time.verdict == compare.REGRESSED and not time.gated
    assert "not gated" in compare_markdown.render_verdict_markdown(result)


@pytest.mark.parametrize(("factor", "expected"), [(1.3, compare.REGRESSED), (1.05, compare.SAME)])
def test_rel_err_gate(tmp_path: Path, factor: float, expected: str) -> None:
    recs = make_records()
    result = run_compare(tmp_path, recs, edit(recs, "linear", rel_err=lambda e: e * factor))
    linear = {c.verdict for c in result.cases if c.label == "linear"}
    assert linear == {expected}
    assert compare.exit_code(result) == (1 if expected == compare.REGRESSED else 0)


def test_rel_err_of_exact_attention_has_an_absolute_tolerance(tmp_path: Path) -> None:
    recs = make_records()
    result = run_compare(tmp_path, recs, edit(recs, "flash", rel_err=lambda e: e + 5e-7))
    assert compare.exit_code(result) == 0  # 3e-7 -> 8e-7 is below base * 1.1 + 1e-6


def test_rel_err_budget(tmp_path: Path) -> None:
    recs = make_records()
    result = run_compare(tmp_path, recs, recs, rel_err_budget={"linear": 0.5})
    assert {c.label for c in result.regressions} == {"linear"}
    assert "budget" in compare_markdown.render_verdict_markdown(result)


@pytest.mark.parametrize(("device", "gated"), [("cuda", True), ("cpu", False)])
def test_peak_memory_gated_only_on_cuda(tmp_path: Path, device: str, gated: bool) -> None:
    recs = make_records(device=device)
    head = edit(recs, "flash", peak_mem_bytes=lambda b: b + (2 << 20))
    result = run_compare(tmp_path, recs, head)
    assert compare.exit_code(result) == (1 if gated else 0)
    if gated:
        assert {c.label for c in result.regressions} == {"flash"}
        assert "peak_mem_bytes (MiB) base → head" in compare_markdown.render_verdict_markdown(result)


@pytest.mark.parametrize(
    ("base_status", "head_status", "fails"),
    [("ok", "oom", True), ("ok", "skipped", True), ("oom", "ok", False), ("oom", "error", False)],
)
def test_status_changes(tmp_path: Path, base_status: str, head_status: str, fails: bool) -> None:
    recs = make_records()
    base = edit(recs, "softmax", status=base_status, reason=f"{base_status} reason")
    head = edit(recs, "softmax", status=head_status, reason=f"{head_status} reason")
    result = run_compare(tmp_path, base, head)
    assert {c.verdict for c in result.cases if c.label == "softmax"} == {compare.STATUS_CHANGED}
    assert compare.exit_code(result) == int(fails)
    md = compare_markdown.render_verdict_markdown(result)
    assert f"{head_status} reason" in md or head_status == "ok"


def test_new_and_missing_cases_do_not_fail(tmp_path: Path) -> None:
    recs = make_records()
    base = [r for r in recs if r.label != "linear"]
    head = [r for r in recs if r.label != "softmax"]
    result = run_compare(tmp_path, base, head)
    counts = result.counts
    assert counts[compare.NEW] == len(LENGTHS) and counts[compare.MISSING] == len(LENGTHS)
    assert compare.exit_code(result) == 0


def test_case_ids_match_across_run_ids(tmp_path: Path) -> None:
    result = run_compare(tmp_path, make_records(run_id="a"), make_records(run_id="b"))
    assert result.counts[compare.NEW] == 0 and result.counts[compare.MISSING] == 0


def test_noisy_timing_is_ambiguous_and_never_fails(tmp_path: Path) -> None:
    def noisy(seed: int) -> list[Record]:  # 50% noise; times stay positive (a negative one is malformed)
        recs = make_records(seed=seed, n_samples=8, noise=0.5)
        for label in VARIANTS:
            recs = edit(recs, label, time_ms_samples=lambda s: [abs(x) + 1e-3 for x in s])
        return recs

    base, head = noisy(1), noisy(2)
    result = run_compare(tmp_path, base, head)
    assert result.counts[compare.AMBIGUOUS] > 0
    assert compare.exit_code(result) == 0
    line = compare_markdown.verdict_line(result)
    if not result.counts[compare.SAME]:  # never SAME for a run with no SAME case
        assert line.startswith("**AMBIGUOUS**") and " SAME " not in line
    md = compare_markdown.render_verdict_markdown(result)
    assert "`run_bench.py ab` interleaves" in md and "confirm with" not in md


def test_headline_names_the_counts_and_is_never_same_without_a_same_case(tmp_path: Path) -> None:
    base = make_records(seed=1, n_samples=3)
    head = edit(make_records(seed=2, n_samples=3), "linear", time_ms_samples=lambda s: [3 * x for x in s])
    result = run_compare(tmp_path, base, head)  # 3 samples: too few for any confirmed time verdict
    assert result.counts[compare.AMBIGUOUS] == 2 and result.verdict == compare.AMBIGUOUS
    line = compare_markdown.verdict_line(result)
    assert line.startswith("**AMBIGUOUS**: 2 of 6 compared cases undecided")
    assert line.endswith(f" · AMBIGUOUS 2 · SAME {result.counts[compare.SAME]}")


def test_env_difference_warns(tmp_path: Path) -> None:
    recs = make_records()
    result = run_compare(tmp_path, recs, recs, env={**CPU_ENV, "torch": "2.14.0"})
    assert any("torch" in w for w in result.env_warnings)
    assert "Warning" in compare_markdown.render_verdict_markdown(result)


def test_markdown_layout(tmp_path: Path) -> None:
    head = edit(make_records(seed=2), "linear", time_ms_samples=lambda s: [1.5 * x for x in s])
    md = compare_markdown.render_verdict_markdown(run_compare(tmp_path, make_records(seed=1), head))
    first = md.splitlines()[0]
    assert first.startswith("**REGRESSED**")
    assert first.endswith(" · REGRESSED 2 · SAME 4")  # the count of each verdict present, none other
    assert md.index("### Regressions") < md.index("<details>")
    assert md.count("<details>") == md.count("</details>") >= 2
    assert "<summary>Same (" in md
    table = md.split("### Regressions (2)")[1].strip().splitlines()
    assert table[0].startswith("| configuration | N |") and set(table[1]) <= set("|-")


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda p: p / "nope", "no such run directory"),
        (lambda p: p.mkdir() or p, "no records.jsonl"),
        (
            lambda p: (p.mkdir(), (p / "records.jsonl").write_text('{"schema_version": 99}\n'))[0] or p,
            "schema",
        ),
        (lambda p: (p.mkdir(), (p / "records.jsonl").write_text("{not json\n"))[0] or p, "unreadable"),
    ],
)
def test_bad_input_raises_one_line(tmp_path: Path, make, message: str) -> None:
    good = write_run(tmp_path / "good", make_records())
    with pytest.raises(compare.CompareInputError) as exc:
        compare.compare_runs(good, make(tmp_path / "bad"))
    assert message in str(exc.value) and "\n" not in str(exc.value)


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "run_bench.py", "compare", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_cli_missing_dir_is_exit_2_in_a_subprocess(tmp_path: Path) -> None:
    base = write_run(tmp_path / "base", make_records(seed=1))
    missing = _cli(str(base), str(tmp_path / "missing"))
    assert missing.returncode == 2
    assert len(missing.stderr.strip().splitlines()) == 1 and "missing" in missing.stderr


@pytest.mark.parametrize(("extra", "code"), [((), 1), (("--no-time-gate",), 0), (("--threshold", "0.6"), 0)])
def test_cli_options(tmp_path: Path, capsys, extra: tuple[str, ...], code: int) -> None:
    from harness.cli import main

    base = write_run(tmp_path / "base", make_records(seed=1))
    slow = write_run(
        tmp_path / "slow",
        edit(make_records(seed=2), "linear", time_ms_samples=lambda s: [1.5 * x for x in s]),
    )
    out_md = tmp_path / "verdict.md"
    assert main(["compare", str(base), str(slow), "--markdown", str(out_md), *extra]) == code
    first = "**REGRESSED**" if code else "**SAME**"
    assert capsys.readouterr().out.startswith(first)
    assert out_md.read_text().startswith(first)


def test_env_keys_follow_the_fingerprint() -> None:
    from harness.measure.env import FINGERPRINT_KEYS

    assert set(compare.ENV_KEYS) == set(FINGERPRINT_KEYS)


def test_ab_merges_rounds_from_the_gates(tmp_path: Path) -> None:
    from harness.regress.ab import REPO_ROOT, merge_rounds

    assert (REPO_ROOT / "run_bench.py").is_file()
    one = write_run(tmp_path / "r0", make_records(seed=1, n_samples=6))
    two = write_run(
        tmp_path / "r1", edit(make_records(seed=2, n_samples=6), "linear", rel_err=lambda e: e + 0.2)
    )
    merge_rounds([one, two], tmp_path / "merged")
    merged = {r["case_id"]: r for r in read_records(tmp_path / "merged" / "records.jsonl")}
    rec = merged["linear-256"]
    assert len(rec["time_ms_samples"]) == 12 and [len(r) for r in rec["time_ms_rounds"]] == [6, 6]
    assert rec["rel_err"] == pytest.approx(0.7)  # median of 0.6 and 0.8
    assert rec["n_samples"] == 12 and rec["tflops"] == pytest.approx(
        rec["flops"] / rec["time_ms_median"] / 1e9
    )
    result = compare.compare_runs(tmp_path / "merged", tmp_path / "merged", n_boot=200)
    assert compare.exit_code(result) == 0


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("time_ms_samples", [1.0, float("nan"), 1.0, 1.0, 1.0]),
        ("time_ms_samples", [float("inf")] * 5),
        ("time_ms_samples", [1.0, -1.0, 1.0, 1.0, 1.0]),
        ("time_ms_median", float("nan")),
        ("time_ms_median", -0.5),
        ("time_ms_median", None),  # samples without their median
        ("rel_err", float("nan")),
    ],
)
def test_malformed_numbers_are_exit_2_naming_field_and_case(tmp_path: Path, capsys, field, value) -> None:
    from harness.cli import main

    base = write_run(tmp_path / "base", make_records(seed=1))
    head = write_run(tmp_path / "head", make_records(seed=2))
    rows = [json.loads(line) for line in (head / "records.jsonl").read_text().splitlines()]
    for row in rows:  # a hand-edited file: json writes NaN and Infinity as they are
        if row["label"] == "linear":
            row[field] = value
    (head / "records.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert main(["compare", str(base), str(head)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"field {field}" in err[0] and "linear-256" in err[0]
