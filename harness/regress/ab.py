"""`compare BASE_RUN HEAD_RUN` and `ab --base REV [--head REV] SCENARIO` command lines.

`ab` is the regression gate that works on shared runners: it checks out both revisions into
temporary git worktrees and runs the same scenario with each on this machine, interleaved in
rounds (base, head, head, base, base, head, ...: the order alternates so drift in the machine's
state hits both sides alike), merges each side's raw time samples per case and compares the two.
It runs `--rounds` rounds, then one more at a time while some case could still hide a change of
DECIDE_FACTOR (1.3x) or more (`undecided`), up to `--max-rounds`: the number of rounds scales with
the machine's noise, and a case still AMBIGUOUS at the cap is reported as such, never as SAME.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from statistics import median

from harness.common.errors import UserError
from harness.common.files import write_atomic
from harness.config.shipped import resolve_scenario
from harness.config.validate import Invalid
from harness.measure.canary import CANARY_GLOB
from harness.measure.timing import summarize
from harness.plugins.metrics import derive, gated_metrics
from harness.regress import compare, compare_markdown
from harness.results.run_records import read_run_records

REPO_ROOT = Path(__file__).resolve().parents[2]  # harness/regress/ab.py -> the checkout
PROGRESS_LINE = re.compile(r"^\[\d+/\d+[\] ]")  # a run's per-case line (execute/progress.PlainReporter)


class AbError(UserError, ValueError):
    """Bad input to `ab` (unknown revision, not a git checkout): one line, exit 2."""


def _compare_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--threshold",
        type=float,
        default=0.05,
        help="relative time change that matters (0.10 on shared machines)",
    )
    p.add_argument("--alpha", type=float, default=0.01, help="1 - confidence of a time verdict")
    p.add_argument("--no-time-gate", action="store_true", help="report time verdicts but never fail on them")
    p.add_argument("--markdown", type=Path, help="also write the verdict report to this file")


def _finish(result: compare.ComparisonResult, markdown_path: Path | None) -> int:
    text = compare_markdown.render_verdict_markdown(result)
    print(text)
    if markdown_path:
        write_atomic(markdown_path, text + "\n")  # never through a symlink, never torn
    return compare.exit_code(result)


def compare_main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="run-bench compare", description="Per-case verdicts between two runs.")
    p.add_argument("base_run", type=Path)
    p.add_argument("head_run", type=Path)
    _compare_args(p)
    args = p.parse_args(argv)
    try:
        result = compare.compare_runs(
            args.base_run, args.head_run, args.threshold, args.alpha, gate_time=not args.no_time_gate
        )
    except compare.CompareInputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return _finish(result, args.markdown)


def _git(*args: str, cwd: Path = REPO_ROOT) -> str:
    res = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True)
    if res.returncode != 0:
        raise AbError(
            f"git {' '.join(args)}: {res.stderr.strip().splitlines()[-1] if res.stderr.strip() else 'failed'}"
        )
    return res.stdout.strip()


def _checkout(rev: str, into: Path) -> Path:
    sha = _git("rev-parse", "--verify", f"{rev}^{{commit}}")
    _git("worktree", "add", "--detach", str(into), sha)
    return into


def _pool(cur: dict, rec: dict) -> None:
    """Fold one more round's ok record into `cur`: raw samples of every samples-gated metric are
    pooled (and kept per round), every exact-gated metric is the median over rounds."""
    for m in gated_metrics():
        g = m.gate
        if g.kind == "samples":
            cur[g.samples] = (cur.get(g.samples) or []) + (rec.get(g.samples) or [])
            cur.setdefault(g.rounds, []).append(rec.get(g.samples) or [])
        elif isinstance(rec.get(m.name), int | float) and isinstance(cur.get(m.name), int | float):
            cur.setdefault("_rounds_" + m.name, [cur[m.name]]).append(rec[m.name])
            cur[m.name] = median(cur["_rounds_" + m.name])


def merge_rounds(round_dirs: list[Path], out_dir: Path) -> None:
    """One run dir whose records pool each case's raw samples over all rounds; the per-round
    samples are kept (`time_ms_rounds`), so `compare` can count run-to-run drift as noise."""
    out_dir.mkdir(parents=True, exist_ok=True)
    for name in ("env.json", "scenario.json", "run.json"):
        if (round_dirs[0] / name).exists():
            shutil.copy(round_dirs[0] / name, out_dir / name)
    for i, d in enumerate(round_dirs):  # every round's environments (never overwritten: content hashes)
        if (d / "envs").is_dir():
            shutil.copytree(d / "envs", out_dir / "envs", dirs_exist_ok=True)
        for canary in d.glob(CANARY_GLOB):  # every round's canary: its wander includes round-to-round drift
            shutil.copy(canary, out_dir / canary.name.replace("canary.", f"canary.round{i}-", 1))
    samples = [m.gate for m in gated_metrics() if m.gate.kind == "samples"]
    merged: dict[str, dict] = {}
    for d in round_dirs:
        for rec in read_run_records(d):  # the run's merge: each case once, whichever worker ran it
            cur = merged.get(rec["case_id"])
            if cur is None:
                merged[rec["case_id"]] = rec
                for g in samples:
                    rec[g.rounds] = [rec.get(g.samples) or []]
            elif cur["status"] == "ok" and rec["status"] == "ok":
                _pool(cur, rec)
            elif rec["status"] != "ok":
                merged[rec["case_id"]] = rec  # a failure in any round is what the gate must see
    path = out_dir / "records.jsonl"
    path.unlink(missing_ok=True)
    for rec in merged.values():
        rec = {k: v for k, v in rec.items() if not k.startswith("_rounds_")}
        if rec["status"] == "ok" and rec.get("time_ms_samples"):
            s = summarize(rec["time_ms_samples"])
            rec.update(
                time_ms_median=s.median_ms,
                time_ms_p20=s.p20_ms,
                time_ms_p80=s.p80_ms,
                noise=s.noise,
                n_samples=s.n,
            )
        rec.update({k: v for k, v in derive(rec).items() if v is not None})
        with open(path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(rec) + "\n")


def _run_relaying(cmd: list[str], cwd: Path, tag: str) -> int:
    """Run one round; relay its per-case progress lines (`[i/n elapsed eta ...] case: result`) to
    stderr behind `tag`, so a round is never silent; its other output is dropped (stdout stays
    the verdict's). Returns the exit code."""
    t0 = time.monotonic()
    with subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.PIPE, text=True, bufsize=1) as proc:
        assert proc.stdout is not None
        for line in proc.stdout:
            if PROGRESS_LINE.match(line):
                print(f"{tag}: {line.rstrip()}", file=sys.stderr, flush=True)
    print(
        f"{tag}: done in {time.monotonic() - t0:.0f} s (exit {proc.returncode})", file=sys.stderr, flush=True
    )
    return proc.returncode


DECIDE_FACTOR = 1.3  # ab runs more rounds until every case's change of this size or more is decided
DEFAULT_MIN_ROUNDS = 3
DEFAULT_MAX_ROUNDS = 10


def undecided(
    result: compare.ComparisonResult, factor: float = DECIDE_FACTOR
) -> list[compare.CaseComparison]:
    """Cases whose time verdict could still hide a change of `factor` or more: AMBIGUOUS, with no
    interval or one that reaches beyond [1/factor, factor]. An AMBIGUOUS case whose interval lies
    inside is decided for this purpose (whatever it hides is smaller than `factor`)."""
    out = []
    timed = compare.time_metric()
    for c in result.undecided:
        f = c.finding(timed.name) if timed else None
        if f is None or f.ci is None or f.ci[0] < 1.0 / factor or f.ci[1] > factor:
            out.append(c)
    return out


def interleave(
    run_side: Callable[[str, int, Path], None],
    out: Path,
    judge: Callable[[Path, Path], compare.ComparisonResult],
    min_rounds: int = DEFAULT_MIN_ROUNDS,
    max_rounds: int = DEFAULT_MAX_ROUNDS,
    factor: float = DECIDE_FACTOR,
) -> compare.ComparisonResult:
    """Run rounds (base, head, head, base, base, head, ...) with `run_side(side, round, run_dir)`,
    at least `min_rounds` and then one more while some case could still hide a change of `factor`
    or more (`undecided`), up to `max_rounds`; merge each side's rounds (`merge_rounds`) into
    out/base and out/head and return `judge(out/base, out/head)` with `rounds` set."""
    rounds: dict[str, list[Path]] = {"base": [], "head": []}
    result = None
    for r in range(max_rounds):
        for side in ("base", "head") if r % 2 == 0 else ("head", "base"):
            run_dir = out / f"{side}-round{r}"
            run_side(side, r, run_dir)
            rounds[side].append(run_dir)
        if r + 1 < min_rounds:
            continue
        for side in ("base", "head"):
            shutil.rmtree(out / side, ignore_errors=True)
            merge_rounds(rounds[side], out / side)
        result = judge(out / "base", out / "head")
        result.rounds = r + 1
        left = undecided(result, factor)
        if not left:
            break
        if r + 1 < max_rounds:
            names = ", ".join(f"{c.label} N={c.seq_len}" for c in left[:4])
            names += " ..." if len(left) > 4 else ""
            print(
                f"ab: after {r + 1} rounds {len(left)} case(s) could still hide a {factor:g}× change "
                f"({names}): one more round",
                file=sys.stderr,
                flush=True,
            )
    assert result is not None  # min_rounds <= max_rounds
    return result


def ab_main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(
        prog="run-bench ab", description="Run a scenario at two revisions, interleaved, and compare."
    )
    p.add_argument("scenario", type=Path)
    p.add_argument("--base", required=True, help="base git revision (e.g. origin/main)")
    p.add_argument(
        "--head", help="head git revision (default: this working tree, uncommitted changes included)"
    )
    p.add_argument(
        "--rounds",
        type=int,
        default=DEFAULT_MIN_ROUNDS,
        help=f"rounds of (base, head) runs before the first verdict (default {DEFAULT_MIN_ROUNDS}, >= 2)",
    )
    p.add_argument(
        "--max-rounds",
        type=int,
        default=DEFAULT_MAX_ROUNDS,
        help=f"more rounds, one at a time, until every {DECIDE_FACTOR:g}x change is decided, up to this "
        f"many (default {DEFAULT_MAX_ROUNDS})",
    )
    p.add_argument("--device", choices=("cpu", "cuda", "auto"))
    p.add_argument("--out", type=Path, help="keep the runs here (default: a temporary directory)")
    _compare_args(p)
    args = p.parse_args(argv)
    if args.rounds < 2:
        raise AbError(f"--rounds: expected an integer >= 2, found {args.rounds}")
    if args.max_rounds < args.rounds:
        raise AbError(f"--max-rounds: expected an integer >= --rounds ({args.rounds}), got {args.max_rounds}")
    try:  # a file, or a shipped scenario by name (`ab quick`)
        scenario = Path(resolve_scenario(str(args.scenario))).resolve()
    except Invalid as err:
        raise AbError(f"{args.scenario}: {err.message}") from None
    work = Path(tempfile.mkdtemp(prefix="attnbench-ab-"))
    out = args.out or work / "runs"
    trees: list[Path] = []
    try:
        base_tree = _checkout(args.base, work / "base")
        trees.append(base_tree)
        head_tree = REPO_ROOT if args.head is None else _checkout(args.head, work / "head")
        if args.head is not None:
            trees.append(head_tree)
        sides = {"base": base_tree, "head": head_tree}

        def run_side(side: str, r: int, run_dir: Path) -> None:
            cmd = [sys.executable, "run_bench.py", str(scenario), "--out", str(run_dir), "--no-plots"]
            if args.device:
                cmd += ["--device", args.device]
            tag = f"ab: round {r + 1} (of {args.rounds}-{args.max_rounds}) {side}"
            print(tag, file=sys.stderr, flush=True)
            res = _run_relaying(cmd, sides[side], tag)
            if res != 0:
                raise AbError(f"{side} run failed with exit code {res} ({' '.join(cmd)})")

        def judge(base: Path, head: Path) -> compare.ComparisonResult:
            gate = not args.no_time_gate
            return compare.compare_runs(base, head, args.threshold, args.alpha, gate_time=gate)

        try:
            result = interleave(run_side, out, judge, args.rounds, args.max_rounds)
        except compare.CompareInputError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        return _finish(result, args.markdown)
    finally:
        for tree in trees:
            subprocess.run(
                ["git", "worktree", "remove", "--force", str(tree)], cwd=REPO_ROOT, capture_output=True
            )
        if args.out is None:
            shutil.rmtree(work, ignore_errors=True)
