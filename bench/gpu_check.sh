#!/usr/bin/env bash
# One prepared run on a GPU machine (<= 8.5 minutes): environment, the benchmark report, then the GPU tests
# (benchmarks first: on a short loan the figures are what cannot be had on CPU).
#   bash bench/gpu_check.sh OUT_DIR
# Run from anywhere; uses the checkout (PYTHONPATH=repo root) and installs nothing.
# Exits non-zero only if a step crashed or was killed by its time limit; failing tests are
# reported in OUT_DIR/tests.log and the summary, not as a crash.
set -u
OUT="${1:?usage: bash bench/gpu_check.sh OUT_DIR}"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
cd "$ROOT"
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
PY="${PYTHON:-$(command -v python3 || command -v python)}"
# Limits: report + 30 s grace + tests stay under 8.5 minutes. On an H200 (f6584a3) the modules took
# 16 s (LARS), 118 s (encoder), 81 s (training), 17 s (augmentation) and 79 s (NT-Xent, alone), and
# the GPU tests 62 s; NT-Xent, last, saves its rows as it goes in case the budget cuts it.
TEST_LIMIT="${TEST_LIMIT:-100}"       # seconds for the GPU tests
REPORT_LIMIT="${REPORT_LIMIT:-350}"   # seconds for all benchmark modules together
MODULE_LIMIT="${MODULE_LIMIT:-150}"   # seconds for one benchmark module
crashed=0

echo "== environment" | tee "$OUT/env.txt"
{ nvidia-smi -L 2>&1 || echo "nvidia-smi not available"
  "$PY" -c 'import sys, torch; print("python", sys.version.split()[0]); print("torch", torch.__version__, "cuda", torch.version.cuda, "available", torch.cuda.is_available()); print("device", torch.cuda.get_device_name() if torch.cuda.is_available() else "none")'
  "$PY" -c 'import triton; print("triton", triton.__version__)' 2>&1
  git -C "$ROOT" log -1 --format='commit %H %cd' 2>/dev/null; } 2>&1 | tee -a "$OUT/env.txt"

echo "== benchmarks (limit ${REPORT_LIMIT}s) -> $OUT/results.md"
timeout -k 10 "$((REPORT_LIMIT + 30))" "$PY" bench/gpu_report.py "$OUT" --isolate --module-timeout "$MODULE_LIMIT" \
    --budget "$REPORT_LIMIT" \
    2>&1 | tee "$OUT/report.log"
rc=${PIPESTATUS[0]}
if [ "$rc" -ne 0 ]; then echo "report: exit status $rc"; crashed=1; fi


echo "== GPU tests (limit ${TEST_LIMIT}s; the slow compile test is left to the epoch row of gpu_train) -> $OUT/tests.log"
# pytest-xdist, where installed, spreads the Triton compilations over 4 processes.
XDIST=$("$PY" -c 'import xdist' 2>/dev/null && echo "-n 4" || true)
timeout -k 10 "$TEST_LIMIT" "$PY" -m pytest tests -q -m "(cuda or triton) and not slow" -p no:cacheprovider $XDIST \
    > "$OUT/tests.log" 2>&1
rc=$?
tail -n 25 "$OUT/tests.log"
case $rc in
  0|1|5) echo "tests: pytest exit status $rc (0 passed, 1 failures, 5 none collected)";;
  124|137) echo "tests: killed after ${TEST_LIMIT}s"; crashed=1;;
  *) echo "tests: pytest crashed (exit status $rc)"; crashed=1;;
esac
echo "$rc" > "$OUT/tests.rc"

echo "== done: crashed=$crashed; files in $OUT"
exit "$crashed"
