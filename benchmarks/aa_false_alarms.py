"""Measure `compare` and `ab` on this machine: the A/A false-alarm rate and the smallest slowdown
each detects at its default settings. The README's "Regression tracking" figures come from here.

    python benchmarks/aa_false_alarms.py --runs 21 --ab 6 --out /tmp/aa   (about 10 min on 2 cores)

compare: `--runs` serial runs of one tiny scenario (the same code, one after the other, as CI
would run a baseline and a head), each compared with the next: a compare with any REGRESSED case
(or a shared-shift regression) is a false alarm. ab: `--ab` A/A gates, each `--rounds` interleaved
rounds per side (base, head, head, base, ...) of the same code, merged with ab's own
`merge_rounds` and compared as `ab` does (the git checkouts are the only part left out: both sides
run this working tree). Detection: the same pairs with one variant's head samples multiplied by
each factor in `--factors`; "detected" = that variant's cases REGRESSED in at least 90% of pairs.
Prints one JSON object (also written to OUT/summary.json).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from harness.config.scenario import load_scenario  # noqa: E402
from harness.execute.progress import QuietReporter  # noqa: E402
from harness.execute.runner import run_scenario  # noqa: E402
from harness.regress import compare  # noqa: E402
from harness.regress.ab import merge_rounds  # noqa: E402
from harness.results.records import read_records  # noqa: E402

SCENARIO = """name: aa
version: 1
description: A/A false alarms of compare and ab
device: cpu
problem: {batch: 1, heads: 2, head_dim: 32, seq_len: [64, 256], dtype: fp32, causal: false, mode: fwd}
inputs: {dist: gaussian, scale: 1.0, seed: 0}
variants:
  - name: softmax
  - name: flash
  - name: linear
  - name: performer
    params: {features: 64}
accuracy: {rows: 32}
measure: {warmup_ms: 2, min_samples: 10, rep_ms: 5, timeout_s: 60}
"""
PLANT = "linear"


def run_once(scenario_path: Path, out: Path) -> Path:
    """One run of the scenario into `out` (kept when it is complete already: judge again with
    changed rules without running again)."""
    if (out / "records.jsonl").is_file():
        return out
    scenario = load_scenario(str(scenario_path))
    run_scenario(scenario, out, "cpu", reporter=QuietReporter(), executor="subprocess", plots=False)
    return out


def planted(run_dir: Path, out: Path, factor: float) -> Path:
    """A copy of `run_dir` with PLANT's time samples (and per-round samples) times `factor`."""
    shutil.copytree(run_dir, out, dirs_exist_ok=True)
    lines = []
    for row in read_records(run_dir / "records.jsonl"):
        if row["label"] == PLANT and row.get("time_ms_samples"):
            row["time_ms_samples"] = [factor * x for x in row["time_ms_samples"]]
            row["time_ms_median"] = factor * row["time_ms_median"]
        if row["label"] == PLANT and row.get("time_ms_rounds"):
            row["time_ms_rounds"] = [[factor * x for x in r] for r in row["time_ms_rounds"]]
        lines.append(json.dumps(row))
    (out / "records.jsonl").write_text("\n".join(lines) + "\n")
    return out


def judge(pairs: list[tuple[Path, Path]], factors: list[float], work: Path) -> dict:
    false_alarms, cases, bad_cases, drift, alarms = 0, 0, 0, [], []
    for base, head in pairs:
        r = compare.compare_runs(base, head)
        false_alarms += r.regressed
        for c in r.regressions:
            f = c.finding("time_ms_median")
            alarms.append(f"{c.label} N={c.seq_len}: {f.ratio:.3f}x CI {f.ci}, canary {r.drift.describe()}")
        timed = [c for c in r.cases if c.base_status == "ok" and c.head_status == "ok"]
        cases += len(timed)
        bad_cases += len(r.regressions)
        drift.append(None if r.drift.ratio is None else round(r.drift.ratio, 4))
    detect = {}
    for f in factors:
        hits = 0
        for i, (base, head) in enumerate(pairs):
            r = compare.compare_runs(base, planted(head, work / f"plant-{f}-{i}", f))
            plant = [c for c in r.cases if c.label == PLANT and c.base_status == "ok"]
            hits += bool(plant) and all(c.verdict == compare.REGRESSED for c in plant)
            shutil.rmtree(work / f"plant-{f}-{i}")
        detect[str(f)] = hits / len(pairs)
    smallest = next((f for f in factors if detect[str(f)] >= 0.9), None)
    return {
        "compares": len(pairs),
        "false_alarm_compares": false_alarms,
        "false_alarm_rate": false_alarms / len(pairs),
        "regressed_cases": f"{bad_cases} of {cases}",
        "canary_ratios": drift,
        "alarms": alarms,
        "detected_fraction": detect,
        "smallest_detected_slowdown": smallest,
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=21, help="serial runs for compare (runs - 1 compares)")
    p.add_argument("--ab", type=int, default=6, help="A/A ab gates")
    p.add_argument("--rounds", type=int, default=3, help="rounds per side of each ab gate (ab's default)")
    p.add_argument("--factors", default="1.05,1.1,1.2,1.3,1.5", help="planted slowdowns to try")
    p.add_argument("--out", type=Path, default=Path("/tmp/attnbench-aa"))
    args = p.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    scenario = args.out / "aa.yaml"
    scenario.write_text(SCENARIO)
    factors = [float(x) for x in args.factors.split(",")]
    summary: dict = {}
    runs = [run_once(scenario, args.out / f"serial{i}") for i in range(args.runs)]
    summary["compare"] = judge(list(zip(runs, runs[1:], strict=False)), factors, args.out)
    gates = []
    for g in range(args.ab):
        sides: dict[str, list[Path]] = {"base": [], "head": []}
        for r in range(args.rounds):
            for side in ("base", "head") if r % 2 == 0 else ("head", "base"):
                sides[side].append(run_once(scenario, args.out / f"ab{g}-{side}{r}"))
        for side, dirs in sides.items():
            shutil.rmtree(args.out / f"ab{g}-{side}", ignore_errors=True)
            merge_rounds(dirs, args.out / f"ab{g}-{side}")
        gates.append((args.out / f"ab{g}-base", args.out / f"ab{g}-head"))
    if gates:
        summary["ab"] = judge(gates, factors, args.out)
    text = json.dumps(summary, indent=2)
    (args.out / "summary.json").write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
