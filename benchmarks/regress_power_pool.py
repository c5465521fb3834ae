"""Judge again, with the current rules, every run that pieces of benchmarks/regress_power.py left in
their folders (run in the background, side by side, on a loaded machine), and count what they add up
to. Nothing is run; only complete runs count (records.jsonl and report.md).

    python benchmarks/regress_power_pool.py /tmp/p/cmp /tmp/p/ab15 /tmp/p/ab20 /tmp/p/abaa1 \
        --history-steps /tmp/p/hist --out /tmp/p/pool.json

- compare: every pair of runs of two revisions taken one right after the other, base first or
  head first: `serialI-base` with `serialI-1.5` / `serialI-2.0` (regress_power's compare piece),
  and each round of an `ab` gate (`ab-F-T/base-roundR` with `head-roundR`, run back to back). A/A:
  the rounds of the A/A gates and consecutive `serialI-base` runs. Caught = exit 1 naming the
  planted variant; an A/A pair with exit 1 is a false alarm.
- ab: every gate with all its rounds complete, merged (ab's `merge_rounds`) and compared.
- history: the first `--history-runs` unplanted runs in the order they started (one commit each),
  checked, then the 1.25x runs in `--history-steps` (`stepK`) added one at a time, checked after
  each (found = exit 1 naming the planted variant).

Every figure carries the 1-minute load averages recorded beside its runs (load.json).
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import sys
import tempfile
from pathlib import Path
from statistics import median

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from harness.regress import compare, history  # noqa: E402
from harness.regress.ab import merge_rounds  # noqa: E402
from harness.regress.history_check import check_history  # noqa: E402

PLANT = "planted_linear"


def complete(run: Path) -> bool:
    return (run / "records.jsonl").is_file() and (run / "report.md").is_file()


def load_of(*runs: Path) -> list[float]:
    out = []
    for r in runs:
        if (r / "load.json").is_file():
            d = json.loads((r / "load.json").read_text())
            out += [float(d["load_before"]), float(d["load_after"])]
    return out


def started(run: Path) -> str:
    return str(json.loads((run / "run.json").read_text()).get("started_at", ""))


def judge(base: Path, head: Path) -> dict:
    r = compare.compare_runs(base, head)
    timed = [(c, c.finding("time_ms_median")) for c in r.cases if c.label == PLANT]
    planted = [round(f.ratio, 3) for _, f in timed if f is not None and f.ratio]
    return {
        "base": str(base),
        "head": str(head),
        "exit": compare.exit_code(r),
        "caught": compare.exit_code(r) == 1 and PLANT in {c.label for c in r.regressions},
        "regressed": sorted({c.label for c in r.regressions}),
        "verdicts": {v: n for v, n in r.counts.items() if n},
        "planted_ratio": planted,
        "load": load_of(base, head),
    }


def pairs(folders: list[Path]) -> dict[str, list[tuple[Path, Path]]]:
    """(base, head) serial pairs per kind: '1.5', '2.0', 'aa'."""
    out: dict[str, list[tuple[Path, Path]]] = {"1.5": [], "2.0": [], "aa": []}
    for folder in folders:
        serial = {}
        for run in folder.glob("serial*-*"):
            m = re.fullmatch(r"serial(\d+)-(base|1\.5|2\.0)", run.name)
            if m and complete(run):
                serial[(int(m[1]), m[2])] = run
        for (i, side), run in sorted(serial.items()):
            if side != "base" and (i, "base") in serial:
                out[side].append((serial[(i, "base")], run))
            if side == "base" and (i + 1, "base") in serial:
                out["aa"].append((run, serial[(i + 1, "base")]))
        for gate in folder.glob("ab-*-*"):
            kind = gate.name.split("-")[1]
            for b in sorted(gate.glob("base-round*")):
                h = gate / b.name.replace("base", "head")
                if complete(b) and complete(h):
                    out[kind].append((b, h))
    return out


def ab_gates(folders: list[Path], rounds: int) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for folder in folders:
        for gate in sorted(folder.glob("ab-*-*")):
            sides = {s: sorted(gate.glob(f"{s}-round*")) for s in ("base", "head")}
            if any(len([r for r in runs if complete(r)]) < rounds for runs in sides.values()):
                continue
            with tempfile.TemporaryDirectory() as tmp:
                for s, runs in sides.items():
                    merge_rounds(runs[:rounds], Path(tmp) / s)
                res = judge(Path(tmp) / "base", Path(tmp) / "head")
            res["load"] = load_of(*sides["base"][:rounds], *sides["head"][:rounds])
            out.setdefault(gate.name.split("-")[1], []).append(res | {"gate": str(gate)})
    return out


def history_power(folders: list[Path], steps: Path | None, n: int) -> dict:
    globs = ("serial*-base", "ab-aa-*/*-round*", "ab-*/base-round*")
    unplanted = [r for f in folders for g in globs for r in f.glob(g) if complete(r)]
    unplanted = sorted(set(unplanted), key=started)[:n]
    step_runs = sorted((r for r in (steps.glob("step*") if steps else []) if complete(r)), key=started)
    store = Path(tempfile.mkdtemp()) / "history"
    try:
        for i, run in enumerate(unplanted):
            history.add_run(run, store, f"{i:040x}")

        def check() -> tuple[int, list[str]]:
            res = check_history(history.load_store(store))
            return (1 if res.failing else 0), [s.describe() for s in res.failing]

        code, found = check()
        quiet = {"runs": len(unplanted), "exit": code, "failing": found, "load": load_of(*unplanted)}
        out = {"unplanted": quiet, "after_step": []}
        for k, run in enumerate(step_runs):
            history.add_run(run, store, f"{len(unplanted) + k:040x}")
            code, found = check()
            hit = code == 1 and any(PLANT in s for s in found)
            out["after_step"].append({"runs_after": k + 1, "exit": code, "found": hit, "failing": found})
        out["step_load"] = load_of(*step_runs)
        out["step_found_after_runs"] = next((s["runs_after"] for s in out["after_step"] if s["found"]), None)
        return out
    finally:
        shutil.rmtree(store.parent, ignore_errors=True)


def summary_of(items: list[dict], key: str) -> dict:
    loads = sorted(x for it in items for x in it["load"])
    return {
        "tries": len(items),
        key: sum(it["caught"] if key == "caught" else it["exit"] == 1 for it in items),
        "load_1min": [loads[0], round(median(loads), 1), loads[-1]] if loads else None,
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("folders", type=Path, nargs="+", help="the --out folders of regress_power.py pieces")
    p.add_argument("--history-steps", type=Path, help="a folder of 1.25x runs stepK")
    p.add_argument("--history-runs", type=int, default=20)
    p.add_argument("--ab-rounds", type=int, default=2, help="rounds per side an ab gate needs to count")
    p.add_argument("--out", type=Path, help="write the JSON here too")
    args = p.parse_args()
    found = pairs(args.folders)
    compared = {k: [judge(b, h) for b, h in v] for k, v in found.items()}
    gates = ab_gates(args.folders, args.ab_rounds)
    result = {
        "compare": {
            "1.5": summary_of(compared["1.5"], "caught"),
            "2.0": summary_of(compared["2.0"], "caught"),
            "aa": summary_of(compared["aa"], "false_alarms"),
        },
        "ab": {k: summary_of(v, "false_alarms" if k == "aa" else "caught") for k, v in sorted(gates.items())},
        "history": history_power(args.folders, args.history_steps, args.history_runs),
        "details": {"compare": compared, "ab": gates},
    }
    text = json.dumps(result, indent=1)
    if args.out:
        args.out.write_text(text + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "details"}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
