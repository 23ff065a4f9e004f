#!/usr/bin/env bash
# Where the Table 4 step's time goes and what the loss's rewrites save, in one call on one GPU (docs/performance.md):
#   1. bench/loss_variants.py: the LM head + loss, seven ways, each checked against the XLA passes, then timed;
#   2. launch/benchmark.py with a trace and XLA's dump, then bench/profile_summary.py --hlo_dir: every kernel's
#      time, and for each XLA fusion its shape and the JAX operation it came from.
#
#   bash bench/table4_profile.sh       (repo root on the GPU machine; about 3 minutes; output in $OUT)
set -u -o pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/table4_profile}
ROOT=${BENCH_DIR:-/tmp/table4_profile_work}
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD:${PYTHONPATH:-}
mkdir -p "$OUT" "$ROOT"
(cd bench && timeout 240 python3 loss_variants.py) 2>&1 | grep -v -i warn | tail -9 | tee "$OUT/loss_variants.log"
rm -rf "$ROOT/hlo" "$ROOT/prof"
XLA_FLAGS="--xla_dump_to=$ROOT/hlo --xla_dump_hlo_as_text" timeout 240 python3 launch/benchmark.py \
  --config=configs/0p5b_16b.py --config.train.global_batch_size=32 --config.data.seq_len=1024 --steps=10 \
  --profile_dir="$ROOT/prof" 2>&1 | grep "^step" | tee "$OUT/profile_bench.log"
timeout 120 python3 bench/profile_summary.py "$ROOT/prof" --hlo_dir="$ROOT/hlo" --top=50 > "$OUT/profile_hlo.txt" 2>&1
head -60 "$OUT/profile_hlo.txt"
