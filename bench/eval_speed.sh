#!/usr/bin/env bash
# Evaluation speed on the GPU machine (issue 15): the default suite of the 0.5B config, and 16x.
#
#   bash bench/eval_speed.sh        (from the repo root on the device machine; results in $OUT)
#
# The weights are those of a 0.5B run trained for 2 steps (speed does not depend on their values),
# on the 44M experiment's code corpus and tokenizer (staged here, 25 s). launch/evaluate.py writes the
# seconds per task and the number of XLA compilations into results.json; this prints them.
set -u -o pipefail
cd "$(dirname "$0")/.."
ROOT=${BENCH_DIR:-/tmp/eval_speed}
OUT=${OUT:-$ROOT/out}
export PYTHONUNBUFFERED=1
mkdir -p "$ROOT" "$OUT"
if [ ! -f "$ROOT/data/metadata.json" ]; then
  python experiments/drope_small/stage_corpus.py --out="$ROOT/stage" --tokenizer=experiments/drope_small/tokenizer \
    --max_mb=40 > "$ROOT/stage.log" 2>&1 &&
  python launch/prepare_data.py --input="$ROOT/stage/corpus/*.jsonl" --format=jsonl \
    --tokenizer="$ROOT/stage/tokenizer" --out="$ROOT/data" --val_fraction=0.05 > "$ROOT/prepare.log" 2>&1 || exit 1
fi
W=$ROOT/run
if [ ! -f "$W/eval.json" ]; then
  python launch/tpu_run.py --config=configs/0p5b_16b.py --workdir="$W" --config.data.path="$ROOT/data" \
    --config.train.total_tokens=None --config.train.total_steps=2 --config.drope.flip_tokens=None \
    --config.drope.flip_step=1 --config.drope.recal_warmup_steps=0 --config.train.global_batch_size=8 \
    "--config.eval.lengths=(1,)" --config.eval.num_sequences=2 > "$ROOT/train.log" 2>&1 || { tail "$ROOT/train.log"; exit 1; }
fi
for lengths in 1,2,4,8 16; do
  tasks=ppl,niah; [ "$lengths" = 16 ] && tasks=ppl,niah
  /usr/bin/time -f "wall %e s" python launch/evaluate.py --workdir="$W" --methods=drope,rope,pi,ntk,yarn \
    --lengths=$lengths --tasks=$tasks --niah_samples=8 --batch_size=8 --out="$ROOT/eval_$lengths" \
    2>&1 | grep -v -i warn | tail -25 | tee "$OUT/eval_$lengths.log"
  cp "$ROOT/eval_$lengths/results.json" "$OUT/results_$lengths.json" 2>/dev/null
  python - "$ROOT/eval_$lengths/results.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
print("timing:", json.dumps(r.get("timing")))
PY
done
