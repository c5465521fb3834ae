#!/usr/bin/env python3
"""Summary of bench/gpu_check.sh's output (docs/gpu.md): the flash sanity TFLOP/s, the luna-vs-flash
table of scenarios/luna_long.yaml and the issue's targets, judged; plus the pytest -m gpu counts.

    python bench/gpu_summary.py SANITY_RUN_DIR LUNA_RUN_DIR [--pytest JUNIT_XML]

Reads records.jsonl, or, in a run cut short, the worker files records.*.jsonl (each case once, an
`ok` record winning). Plain json, no harness import: it works on a copy of the output folder too.
"""

from __future__ import annotations

import argparse
import json
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

TARGET_N = 131072
TARGETS = {  # the figures for luna/triton at TARGET_N, non-causal forward
    "speedup_vs_flash": 100.0,  # at least
    "time_over_floor": 3.0,  # at most
    "extra_mem_over_inputs": 0.10,  # at most
    "efficiency_length": 2048,  # at most
}
FA2_H100_TFLOPS = (330.0, 370.0)  # FlashAttention-2 paper, forward, head dim 128, non-causal, H100 SXM


def load_records(run_dir: Path) -> list[dict]:
    """Each case's record once: records.jsonl, else the merged worker files (an ok record wins)."""
    files = [run_dir / "records.jsonl"] if (run_dir / "records.jsonl").exists() else []
    files = files or sorted(run_dir.glob("records.*.jsonl"))
    by_case: dict[str, dict] = {}
    for path in files:
        for line in path.read_text().splitlines():
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:  # a line cut by a killed worker
                continue
            old = by_case.get(rec.get("case_id", ""))
            if old is None or (old.get("status") != "ok" and rec.get("status") == "ok"):
                by_case[rec.get("case_id", "")] = rec
    return list(by_case.values())


def impl_of(rec: dict) -> str:
    return f"{rec['variant']}/{rec.get('impl') or '-'}"


def efficiency_length(times: dict[int, float], base: dict[int, float]) -> int | None:
    """Smallest N from which `times` beats `base` at every measured length up to the longest."""
    common = sorted(set(times) & set(base))
    length = None
    for n in reversed(common):
        if times[n] < base[n]:
            length = n
        else:
            break
    return length


def fmt(x: float | None, spec: str = ".3g") -> str:
    """x with `spec`; ints (lengths) in full; "-" for None."""
    return "-" if x is None else str(x) if isinstance(x, int) else format(x, spec)


def sanity_section(records: list[dict]) -> list[str]:
    lines = ["## flash sanity (forward, head dim 128, non-causal, bf16)", ""]
    lines += ["| impl | N | status | median ms | TFLOP/s |", "|---|---:|---|---:|---:|"]
    for rec in sorted(records, key=lambda r: (impl_of(r), r["seq_len"])):
        tflops = rec.get("tflops")
        if tflops is None and rec.get("flops") and rec.get("time_ms_median"):
            tflops = rec["flops"] / (rec["time_ms_median"] * 1e-3) / 1e12
        status = rec["status"] + (f" ({rec.get('reason', '')[:60]})" if rec["status"] != "ok" else "")
        cells = [impl_of(rec), str(rec["seq_len"]), status, fmt(rec.get("time_ms_median")), fmt(tflops)]
        lines.append("| " + " | ".join(cells) + " |")
    lines += [
        "",
        f"Published FlashAttention-2 on H100 SXM: {FA2_H100_TFLOPS[0]:g}-{FA2_H100_TFLOPS[1]:g} TFLOP/s.",
        "",
    ]
    return lines


def luna_section(records: list[dict]) -> list[str]:
    lines = []
    ok = [r for r in records if r["status"] == "ok" and r.get("mode") == "fwd"]
    for causal in (False, True):
        rows = [r for r in ok if bool(r.get("causal")) == causal]
        if not rows:
            continue
        times: dict[str, dict[int, float]] = {}
        for r in rows:
            times.setdefault(impl_of(r), {})[r["seq_len"]] = r["time_ms_median"]
        flash = next((t for key, t in times.items() if key.startswith("flash/")), {})
        impls = sorted(times)
        lengths = sorted({n for t in times.values() for n in t})
        title = "causal" if causal else "non-causal"
        lines += [f"## luna_long, {title} forward (median ms; x = speedup against flash)", ""]
        lines += ["| N | " + " | ".join(impls) + " |", "|---:|" + "---:|" * len(impls)]
        for n in lengths:
            cells = []
            for key in impls:
                t = times[key].get(n)
                speed = f" ({flash[n] / t:.3g}x)" if t and n in flash and not key.startswith("flash/") else ""
                cells.append(fmt(t) + speed)
            lines.append(f"| {n} | " + " | ".join(cells) + " |")
        eff = {key: efficiency_length(times[key], flash) for key in impls if not key.startswith("flash/")}
        lines += [
            "",
            "efficiency length against flash: " + ", ".join(f"{k} {fmt(v)}" for k, v in eff.items()),
        ]
        lines.append("")
    skipped = sorted({f"{impl_of(r)}: {r.get('reason', '')[:100]}" for r in records if r["status"] != "ok"})
    if skipped:
        lines += ["Cases not ok (impl: reason):", *(f"- {s}" for s in skipped), ""]
    return lines


def targets_section(records: list[dict]) -> list[str]:
    def pick(impl: str, n: int) -> dict | None:
        return next(
            (r for r in records if impl_of(r) == impl and r["seq_len"] == n and not r.get("causal")
             and r.get("mode") == "fwd" and r["status"] == "ok"),
            None,
        )  # fmt: skip

    luna, flash = pick("luna/triton", TARGET_N), pick("flash/sdpa", TARGET_N)
    lines = [f"## targets: luna/triton, non-causal forward, N = {TARGET_N}", ""]
    if luna is None or flash is None:
        return lines + ["not measured (luna/triton or flash/sdpa has no ok record at this length)", ""]
    nc = [r for r in records if not r.get("causal") and r.get("mode") == "fwd" and r["status"] == "ok"]
    series = {
        key: {r["seq_len"]: r["time_ms_median"] for r in nc if impl_of(r) == key}
        for key in ("luna/triton", "flash/sdpa")
    }
    extra = luna.get("extra_mem_bytes")
    got = {
        "speedup_vs_flash": flash["time_ms_median"] / luna["time_ms_median"],
        "time_over_floor": luna.get("time_over_floor"),
        "extra_mem_over_inputs": extra / luna["input_bytes"]
        if extra is not None and luna.get("input_bytes")
        else None,
        "efficiency_length": efficiency_length(series["luna/triton"], series["flash/sdpa"]),
    }
    for key, target in TARGETS.items():
        value, at_least = got[key], key == "speedup_vs_flash"
        verdict = (
            "n/a"
            if value is None
            else ("PASS" if (value >= target if at_least else value <= target) else "FAIL")
        )
        lines.append(f"- {key}: {fmt(value)} ({'>=' if at_least else '<='} {target:g}): {verdict}")
    return lines + [""]


def pytest_section(junit: Path) -> list[str]:
    if not junit.exists():
        return ["## pytest -m gpu: no junit XML (the step was killed before it wrote one)", ""]
    counts = {"passed": 0, "failed": 0, "error": 0, "skipped": 0}
    failed = []
    for case in ET.parse(junit).iter("testcase"):
        tags = {el.tag for el in case}
        kind = (
            "failed"
            if "failure" in tags
            else "error"
            if "error" in tags
            else "skipped"
            if "skipped" in tags
            else "passed"
        )
        counts[kind] += 1
        if kind in ("failed", "error"):
            failed.append(f"{case.get('classname')}::{case.get('name')}")
    lines = ["## pytest -m gpu", "", ", ".join(f"{v} {k}" for k, v in counts.items())]
    return lines + [f"- {name}" for name in failed[:40]] + [""]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sanity_run", type=Path)
    parser.add_argument("luna_run", type=Path)
    parser.add_argument("--pytest", type=Path, help="junit XML of pytest -m gpu")
    args = parser.parse_args(argv)
    out = ["# GPU check summary", ""]
    if args.pytest is not None:
        out += pytest_section(args.pytest)
    for path, section in ((args.sanity_run, sanity_section), (args.luna_run, luna_section)):
        records = load_records(path)
        out += section(records) if records else [f"## {path.name}: no records", ""]
        if section is luna_section and records:
            out += targets_section(records)
    print("\n".join(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
