"""Measure the power of `compare`, `ab` and `history check` on this machine, under the load it has:
how often each catches a slowdown planted in the code under test, and how often it cries wolf.

    python benchmarks/regress_power.py --out /tmp/power                 (the full protocol, ~1-2 h)
    python benchmarks/regress_power.py --tries 3 --aa 4 --ab-tries 2 --history-runs 8 --out /tmp/p

The slowdown is planted in code, never in records: `planted_linear` is a plugin variant (a package
and its dist-info, registered in the `attnbench.variants` entry-point group, exactly as a pip-installed
plugin is) that computes real linear attention (attentions/linear) REPEAT times per call. Each
"revision" is a copy of that plugin with its own REPEAT (base 4; 5, 6 and 8 for 1.25x, 1.5x and
2x: calls of 0.4-0.8 ms on the small problem below, since on a loaded 2-core machine a call of 1-2 ms
is preempted in about half its samples, measured here), run with its folder on PYTHONPATH: the
scenario, the case ids and everything else are the same, as for two commits of the plugin. The
scenario holds four built-in variants beside it, so the cross-case rules see unchanged cases too.

- compare: `--tries` serial triples (base, 1.5x, 2x; the order rotates), each slowed run compared
  with the base run before it; caught = exit 1 with planted_linear among the regressions.
  A/A: `--aa` serial base-base pairs (consecutive base runs; exit 1 = a false alarm).
- ab: `--ab-tries` gates per factor and `--ab-aa` A/A gates, each through ab's own `interleave`
  (adaptive rounds, `--min-rounds` .. `--max-rounds`), the git checkouts replaced by the plugin
  copies (the only part of `ab` left out).
- history: the first `--history-runs` base runs as a store of one commit each (`history add`),
  `history check` on it (any finding = a false alarm), then 1.25x runs added one at a time (up to
  `--history-after`) and checked after each: found = exit 1 naming planted_linear.

Every run records the 1-minute load average before and after it. Prints one JSON object (also
OUT/summary.json); runs already in OUT are reused (judge again with changed rules, no re-run).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from harness.regress import compare  # noqa: E402
from harness.regress.ab import interleave  # noqa: E402

PLANT = "planted_linear"
BASE_REPEAT = 4  # x ~0.1 ms: a call of ~0.4-0.8 ms, short enough to be rarely preempted under load
SCENARIO = f"""name: power
version: 1
description: power of compare, ab and history check against a slowdown planted in code
device: cpu
problem: {{batch: 1, heads: 1, head_dim: 16, seq_len: [32, 128], dtype: fp32, causal: false, mode: fwd}}
inputs: {{dist: gaussian, scale: 1.0, seed: 0}}
variants:
  - name: softmax
  - name: flash
  - name: linear
  - name: performer
    params: {{features: 64}}
  - name: {PLANT}
accuracy: {{rows: 32}}
measure: {{warmup_ms: 20, min_samples: 50, rep_ms: 400, timeout_s: 60}}
"""
VARIANT = '''
"""{plant}: linear attention (attentions/linear) computed REPEAT times per call: a slowdown planted
in code for benchmarks/regress_power.py. q, k, v: (B, H, N, d) -> (B, H, N, d)."""

from __future__ import annotations

from attentions.linear.variant import LinearAttention

REPEAT = {repeat}


class PlantedLinear(LinearAttention):
    name = "{plant}"
    version = 1

    def forward(self, q, k, v, causal, key_padding_mask=None):
        for _ in range(REPEAT - 1):
            super().forward(q, k, v, causal, key_padding_mask)
        return super().forward(q, k, v, causal, key_padding_mask)
'''


def write_revision(root: Path, repeat: int) -> Path:
    """A copy of the plugin with this REPEAT under `root` (package + dist-info); returns root."""
    package = root / PLANT
    package.mkdir(parents=True, exist_ok=True)
    (package / "__init__.py").write_text("")
    (package / "variant.py").write_text(textwrap.dedent(VARIANT.format(plant=PLANT, repeat=repeat)))
    dist = root / f"{PLANT}-0.1.dist-info"
    dist.mkdir(exist_ok=True)
    (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {PLANT}\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(f"[attnbench.variants]\n{PLANT} = {PLANT}.variant:PlantedLinear\n")
    return root


LOADS: dict[str, tuple[float, float]] = {}
EXECUTOR = ["subprocess"]  # --executor: inline saves a second torch import per run (~25% of a run)


def run_once(scenario: Path, revision: Path, out: Path) -> Path:
    """One run of the scenario with `revision` (a plugin copy) on the path, into `out` (reused when
    complete). Records the 1-minute load average before and after."""
    if (out / "records.jsonl").is_file() and (out / "report.md").is_file():
        return out
    shutil.rmtree(out, ignore_errors=True)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(revision), str(ROOT)]))}
    before = os.getloadavg()[0]
    cmd = [sys.executable, "run_bench.py", str(scenario), "--out", str(out), "--no-plots"]
    cmd += ["--executor", EXECUTOR[0]]
    res = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    if res.returncode != 0:
        raise SystemExit(f"run failed ({res.returncode}): {' '.join(cmd)}\n{res.stderr[-2000:]}")
    LOADS[str(out)] = (before, os.getloadavg()[0])
    (out / "load.json").write_text(json.dumps({"load_before": before, "load_after": os.getloadavg()[0]}))
    return out


def caught(result: compare.ComparisonResult) -> bool:
    return compare.exit_code(result) == 1 and PLANT in {c.label for c in result.regressions}


def planted_ratio(result: compare.ComparisonResult) -> list[float]:
    return [
        round(f.ratio, 3)
        for c in result.cases
        if c.label == PLANT and (f := c.finding("time_ms_median")) is not None and f.ratio
    ]


def describe(result: compare.ComparisonResult) -> dict:
    return {
        "exit": compare.exit_code(result),
        "verdicts": {v: n for v, n in result.counts.items() if n},
        "regressed": sorted({c.label for c in result.regressions}),
        "planted_ratio": planted_ratio(result),
        "canary": None if result.drift.ratio is None else round(result.drift.ratio, 4),
        "rounds": result.rounds,
    }


def compare_power(args, scenario: Path, revs: dict[str, Path]) -> dict:
    base_runs, trials = [], {"1.5": [], "2.0": []}
    for i in range(max(args.tries, args.aa + 1, args.history_runs)):
        order = ["base", "1.5", "2.0"][: 3 if i < args.tries else 1]
        if i < args.tries:
            order = order[i % 3 :] + order[: i % 3]  # rotate which side runs first
        runs = {side: run_once(scenario, revs[side], args.out / f"serial{i}-{side}") for side in order}
        base_runs.append(runs["base"])
        for f in ("1.5", "2.0"):
            if f in runs:
                result = compare.compare_runs(runs["base"], runs[f])
                trials[f].append(describe(result) | {"caught": caught(result)})
        print(f"serial {i}: done (load {os.getloadavg()[0]:.1f})", file=sys.stderr, flush=True)
    aa = [describe(compare.compare_runs(a, b)) for a, b in zip(base_runs, base_runs[1:], strict=False)]
    aa = aa[: args.aa]
    return {
        "caught": {f: sum(t["caught"] for t in ts) for f, ts in trials.items()},
        "tries": {f: len(ts) for f, ts in trials.items()},
        "aa_false_alarms": sum(t["exit"] == 1 for t in aa),
        "aa_pairs": len(aa),
        "trials": trials,
        "aa": aa,
    }, base_runs


def ab_power(args, scenario: Path, revs: dict[str, Path]) -> dict:
    out: dict = {"caught": {}, "tries": {}, "trials": {}}
    plan = [("1.5", args.ab_tries), ("2.0", args.ab_tries), ("aa", args.ab_aa)]
    plan = [(f, n) for f, n in plan if f in args.ab_parts.split(",")]
    for factor, tries in plan:
        results = []
        for t in range(tries):
            folder = args.out / f"ab-{factor}-{t}"
            head = revs["base"] if factor == "aa" else revs[factor]
            sides = {"base": revs["base"], "head": head}

            def run_side(side: str, r: int, run_dir: Path, sides=sides) -> None:
                run_once(scenario, sides[side], run_dir)

            t0 = time.monotonic()
            result = interleave(run_side, folder, compare.compare_runs, args.min_rounds, args.max_rounds)
            results.append(describe(result) | {"caught": caught(result), "s": round(time.monotonic() - t0)})
            print(f"ab {factor} {t}: {results[-1]}", file=sys.stderr, flush=True)
        out["trials"][factor] = results
        out["tries"][factor] = len(results)
        out["caught"][factor] = sum(r["caught"] for r in results)
    out["aa_false_alarms"] = sum(r["exit"] == 1 for r in out["trials"].get("aa", []))
    return out


def history_power(args, scenario: Path, revs: dict[str, Path], base_runs: list[Path]) -> dict:
    store = args.out / "history"
    shutil.rmtree(store, ignore_errors=True)

    def add(run: Path, i: int) -> None:
        cmd = [sys.executable, "run_bench.py", "history", "add", str(run), "--store", str(store)]
        cmd += ["--commit", f"{i:040x}"]
        subprocess.run(cmd, cwd=ROOT, check=True, capture_output=True)

    def check() -> tuple[int, str]:
        cmd = [sys.executable, "run_bench.py", "history", "check", "--store", str(store)]
        res = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
        return res.returncode, res.stdout

    n = args.history_runs
    for i, run in enumerate(base_runs[:n]):
        add(run, i)
    code, text = check()
    quiet = {
        "runs": n,
        "exit": code,
        "findings": [ln.strip() for ln in text.splitlines() if ln.startswith("  ")],
    }
    found_after = None
    after = []
    for k in range(args.history_after):
        run = run_once(scenario, revs["1.25"], args.out / f"history-step{k}")
        add(run, n + k)
        code, text = check()
        hit = code == 1 and any(PLANT in ln and "FAIL" in ln for ln in text.splitlines())
        after.append({"runs_after": k + 1, "exit": code, "found": hit})
        if hit and found_after is None:
            found_after = k + 1
            break
    return {
        "unplanted": quiet,
        "step_found_after_runs": found_after,
        "checks_after_step": after,
        "text": text,
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tries", type=int, default=10, help="compare: serial tries per factor (1.5x, 2x)")
    p.add_argument("--aa", type=int, default=20, help="compare: A/A pairs")
    p.add_argument("--ab-tries", type=int, default=10, help="ab: gates per factor")
    p.add_argument("--ab-aa", type=int, default=20, help="ab: A/A gates")
    p.add_argument("--min-rounds", type=int, default=3, help="ab's --rounds")
    p.add_argument("--max-rounds", type=int, default=10, help="ab's --max-rounds")
    p.add_argument("--history-runs", type=int, default=20, help="history: unplanted runs before the step")
    p.add_argument("--history-after", type=int, default=5, help="history: 1.25x runs after the step, at most")
    p.add_argument("--ab-parts", default="1.5,2.0,aa", help="ab: which gates (comma-separated: 1.5, 2.0, aa)")
    p.add_argument("--executor", default="subprocess", choices=["subprocess", "inline"], help="run executor")
    p.add_argument("--skip", default="", help="comma-separated parts to skip: compare, ab, history")
    p.add_argument("--out", type=Path, default=Path("/tmp/attnbench-power"))
    args = p.parse_args()
    args.out = args.out.resolve()
    EXECUTOR[0] = args.executor
    args.out.mkdir(parents=True, exist_ok=True)
    scenario = args.out / "power.yaml"
    scenario.write_text(SCENARIO)
    repeats = {"base": BASE_REPEAT, "1.25": 5, "1.5": 6, "2.0": 8}
    revs = {side: write_revision(args.out / f"rev-{side}", r) for side, r in repeats.items()}
    skip = set(filter(None, args.skip.split(",")))
    summary: dict = {"repeat": repeats, "started": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())}
    summary["cpu_count"] = os.cpu_count()
    t0 = time.monotonic()
    base_runs: list[Path] = []
    if "compare" not in skip or "history" not in skip:
        summary["compare"], base_runs = compare_power(args, scenario, revs)
    if "history" not in skip:
        summary["history"] = history_power(args, scenario, revs, base_runs)
    if "ab" not in skip:
        summary["ab"] = ab_power(args, scenario, revs)
    loads = sorted(x for pair in LOADS.values() for x in pair)
    if loads:
        summary["load_1min"] = {"min": loads[0], "median": loads[len(loads) // 2], "max": loads[-1]}
    summary["minutes"] = round((time.monotonic() - t0) / 60, 1)
    text = json.dumps(summary, indent=2)
    (args.out / "summary.json").write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
