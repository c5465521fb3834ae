#!/usr/bin/env bash
# The one-shot GPU check (docs/gpu.md): pytest -m gpu, then scenarios/flash_sanity.yaml and
# scenarios/luna_long.yaml, then a summary; every step under `timeout`, so the script always ends
# (about 8 minutes at most with the default step limits). Two quality steps at 512 tokens
# (scenarios/quality_minilm_gpu.yaml, quality_minilm_e2e_gpu.yaml) are off by default, since the
# default steps already fill the 8 minutes: give them a limit to run them (estimates in docs/gpu.md). Installs nothing from the network: wheels
# in ./wheels (if present) are installed with --no-index --no-deps, so the machine's torch stays.
#
#   bench/gpu_check.sh [--dry-run] [OUT_DIR]      OUT_DIR default: $OUT, else ./gpu-out
#
# --dry-run (no GPU needed): checks the tools and Python modules, validates both scenarios for
# `--device cuda` and prints the plan; runs nothing. Step limits (seconds) can be overridden with
# GPU_CHECK_PYTEST_S, GPU_CHECK_SANITY_S and GPU_CHECK_LUNA_S; GPU_CHECK_CAPTURED_S and GPU_CHECK_E2E_S
# (default 0: off) turn the quality steps on; PYTHON picks the interpreter.
# Exit status: 0 when every step ran (test failures and case statuses are in the output folder and
# the summary), 2 on a missing tool or an invalid scenario, 3 without a usable CUDA device.
set -u -o pipefail

DRY=0
if [ "${1:-}" = "--dry-run" ]; then
    DRY=1
    shift
fi
OUT_DIR="${1:-${OUT:-./gpu-out}}"
PY="${PYTHON:-python}"
PYTEST_S="${GPU_CHECK_PYTEST_S:-180}"
SANITY_S="${GPU_CHECK_SANITY_S:-45}"
LUNA_S="${GPU_CHECK_LUNA_S:-210}"
CAPTURED_S="${GPU_CHECK_CAPTURED_S:-0}"  # off by default: about 5 minutes (docs/gpu.md)
E2E_S="${GPU_CHECK_E2E_S:-0}"            # off by default: about 3 minutes
GRACE_S=10  # after SIGINT (pytest writes its junit XML, the runner finalizes), then SIGKILL
SCENARIOS="scenarios/flash_sanity.yaml scenarios/luna_long.yaml"
QUALITY="scenarios/quality_minilm_gpu.yaml scenarios/quality_minilm_e2e_gpu.yaml"
GPU_TESTS="tests/gpu/test_gpu_timer.py tests/gpu/test_gpu_luna_triton.py tests/gpu/test_gpu_contract.py tests/gpu/test_gpu_window_taylor_deltanet.py tests/gpu/test_gpu_hedgehog_fla.py"

cd "$(dirname "$0")/.." || exit 2  # the repository root: run_bench.py, scenarios/, tests/

say() { printf 'gpu_check: %s\n' "$*"; }
need() {
    command -v "$1" >/dev/null 2>&1 || { say "missing tool: $1 ($2)" >&2; exit 2; }
}
need "$PY" "the Python that has torch"
need timeout "coreutils: bounds every step"
need tee "coreutils: logs"

# Python modules: required ones stop the check; optional ones only turn their cases into skips.
"$PY" - <<'EOF' || exit 2
import importlib.util, sys
required = ["torch", "triton", "numpy", "pandas", "pyarrow", "yaml", "rich", "pytest", "pytest_timeout"]
optional = ["flash_attn", "xformers", "fla", "performer_pytorch", "nystrom_attention"]
missing = [m for m in required if importlib.util.find_spec(m) is None]
absent = [m for m in optional if importlib.util.find_spec(m) is None]
print("gpu_check: optional modules not installed (their cases are skipped):", ", ".join(absent) or "none")
if missing:
    print("gpu_check: missing required Python modules:", ", ".join(missing), file=sys.stderr)
    sys.exit(1)
EOF

for limit in "$PYTEST_S" "$SANITY_S" "$LUNA_S" "$CAPTURED_S" "$E2E_S"; do
    case "$limit" in ''|*[!0-9]*) say "a step limit must be a whole number of seconds, got '$limit'" >&2; exit 2 ;; esac
done
for scenario in $SCENARIOS; do
    "$PY" run_bench.py validate "$scenario" --device cuda || { say "invalid scenario $scenario" >&2; exit 2; }
done
# the quality scenarios: validated in a dry run (a broken file is found before a GPU is lent) and when on
[ "$DRY" = 1 ] || [ "$CAPTURED_S" -gt 0 ] || [ "$E2E_S" -gt 0 ] && for scenario in $QUALITY; do
    "$PY" run_bench.py validate "$scenario" --device cuda >/dev/null || { say "invalid scenario $scenario" >&2; exit 2; }
done
onoff() { [ "$1" -gt 0 ] && echo "limit $1 s" || echo "off: set $2 to a limit in seconds"; }

if [ "$DRY" = 1 ]; then
    say "dry run: would write to $OUT_DIR"
    say "  1. pytest -m gpu $GPU_TESTS   (limit ${PYTEST_S} s)"
    say "  2. run_bench.py scenarios/flash_sanity.yaml --out $OUT_DIR/flash_sanity   (limit ${SANITY_S} s)"
    say "  3. run_bench.py scenarios/luna_long.yaml --out $OUT_DIR/luna_long   (limit ${LUNA_S} s)"
    say "  4. run_bench.py scenarios/quality_minilm_gpu.yaml --out $OUT_DIR/quality_minilm   ($(onoff "$CAPTURED_S" GPU_CHECK_CAPTURED_S))"
    say "  5. run_bench.py scenarios/quality_minilm_e2e_gpu.yaml --out $OUT_DIR/quality_minilm_e2e   ($(onoff "$E2E_S" GPU_CHECK_E2E_S))"
    say "  6. bench/gpu_summary.py -> $OUT_DIR/summary.md"
    exit 0
fi

mkdir -p "$OUT_DIR" || exit 2
if [ -d wheels ] && ls wheels/*.whl >/dev/null 2>&1; then
    say "installing carried wheels (no index, no dependencies): $(ls wheels/*.whl | tr '\n' ' ')"
    "$PY" -m pip install --no-index --no-deps --find-links wheels/ wheels/*.whl 2>&1 | tee "$OUT_DIR/pip.log"
fi
command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi > "$OUT_DIR/nvidia-smi.txt" 2>&1
"$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" \
    || { say "torch sees no CUDA device" >&2; exit 3; }

step() {  # step NAME LIMIT_S COMMAND...: run under timeout, log to OUT_DIR/NAME.log, keep going
    local name="$1" limit="$2"
    shift 2
    local start=$SECONDS
    say "$name: start (limit ${limit} s)"
    timeout -s INT -k "$GRACE_S" "$limit" "$@" 2>&1 | tee "$OUT_DIR/$name.log"
    local rc=$?
    say "$name: exit $rc after $((SECONDS - start)) s$([ "$rc" = 124 ] && echo ' (timed out)')"
    echo "$name $rc $((SECONDS - start))" >> "$OUT_DIR/steps.txt"
}

: > "$OUT_DIR/steps.txt"
# shellcheck disable=SC2086  # GPU_TESTS is a list of paths
step pytest-gpu "$PYTEST_S" "$PY" -m pytest -m gpu $GPU_TESTS -p no:cacheprovider -rfEs --durations=15 \
    --junitxml="$OUT_DIR/pytest-gpu.xml"
step flash_sanity "$SANITY_S" "$PY" run_bench.py scenarios/flash_sanity.yaml --out "$OUT_DIR/flash_sanity" \
    --quiet --no-plots
step luna_long "$LUNA_S" "$PY" run_bench.py scenarios/luna_long.yaml --out "$OUT_DIR/luna_long" \
    --quiet --no-plots
if [ "$CAPTURED_S" -gt 0 ]; then
    step quality_minilm "$CAPTURED_S" "$PY" run_bench.py scenarios/quality_minilm_gpu.yaml \
        --out "$OUT_DIR/quality_minilm" --quiet --no-plots
else
    say "quality_minilm: off (GPU_CHECK_CAPTURED_S=0)"
fi
if [ "$E2E_S" -gt 0 ]; then
    step quality_minilm_e2e "$E2E_S" "$PY" run_bench.py scenarios/quality_minilm_e2e_gpu.yaml \
        --out "$OUT_DIR/quality_minilm_e2e" --quiet --no-plots
else
    say "quality_minilm_e2e: off (GPU_CHECK_E2E_S=0)"
fi
"$PY" bench/gpu_summary.py "$OUT_DIR/flash_sanity" "$OUT_DIR/luna_long" --pytest "$OUT_DIR/pytest-gpu.xml" \
    | tee "$OUT_DIR/summary.md"
exit 0
