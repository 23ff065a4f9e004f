#!/usr/bin/env bash
# Does one GPU train two of round 4's 44M-parameter runs at once faster than one after the other? If so,
# round 4's baselines (experiments/round4/run.sh nope at 24, alibi and rnope_swa at 14) can share a machine.
# The step of round 4's NoPE arm (launch/benchmark.py, random tokens) alone, then two copies started together
# (the same compilation, so their timed windows overlap), each with 40% of the GPU's memory.
#
#   bash bench/concurrent_runs.sh        (repo root on the GPU machine; about 2 minutes; logs in $OUT)
set -u -o pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/concurrent_runs}
mkdir -p "$OUT"
export PYTHONPATH=$PWD:${PYTHONPATH:-} PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_MEM_FRACTION=0.4
run() { timeout 180 python3 launch/benchmark.py --config=experiments/round4/config.py:nope,budget=24 \
  --steps="${STEPS:-300}" > "$OUT/$1.log" 2>&1; }
run alone
run first & run second
wait
for name in alone first second; do echo "$name: $(grep '^step' "$OUT/$name.log")"; done | tee "$OUT/summary.log"
