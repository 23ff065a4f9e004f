#!/usr/bin/env bash
# Evaluation speed on the GPU machine (issue 15): the default suite of the 0.5B config, and 16x.
#
#   bash bench/eval_speed.sh        (from the repo root on the device machine; logs and JSON in $OUT)
#   CONFIG=configs/0p5b_16b_wsd.py bash bench/eval_speed.sh   (the shape of docs/evaluation.md's figures)
#   METHODS=drope_raw,rope,pi,ntk,yarn LENGTH_SETS=1,2,4,8 TAG=raw_ bash bench/eval_speed.sh
#       (the suite as it was before the temperature: drope_raw is what drope evaluated then)
#
# The weights are those of a 0.5B run trained for 2 steps (speed does not depend on their values), on
# the 44M experiment's code corpus and tokenizer (staged here). Every stage has a deadline and writes
# its log to $OUT as it goes, so a call that runs out of time still returns what it measured.
# launch/evaluate.py records the seconds per task and the XLA compilations in results.json.
set -u -o pipefail
cd "$(dirname "$0")/.."
ROOT=${BENCH_DIR:-/tmp/eval_speed}
CONFIG=${CONFIG:-configs/0p5b_16b.py}
OUT=${OUT:-$ROOT/out}
export PYTHONUNBUFFERED=1
mkdir -p "$ROOT" "$OUT"
stamp() { echo "[$(date +%T) +${SECONDS}s] $*" | tee -a "$OUT/progress.log"; }
if [ ! -f "$ROOT/data/metadata.json" ]; then
  timeout 120 python experiments/drope_small/stage_corpus.py --out="$ROOT/stage" \
    --tokenizer=experiments/drope_small/tokenizer --max_mb=40 > "$OUT/stage.log" 2>&1 &&
  timeout 120 python launch/prepare_data.py --input="$ROOT/stage/corpus/*.jsonl" --format=jsonl \
    --tokenizer="$ROOT/stage/tokenizer" --out="$ROOT/data" --val_fraction=0.05 > "$OUT/prepare.log" 2>&1 || exit 1
fi
stamp "data ready"
SHAPE=$(basename "$CONFIG" .py)
W=$ROOT/run_$SHAPE
if [ ! -f "$W/eval.json" ]; then
  timeout 300 python launch/tpu_run.py --config="$CONFIG" --workdir="$W" --config.data.path="$ROOT/data" \
    --config.train.total_tokens=None --config.train.total_steps=2 --config.drope.flip_tokens=None \
    --config.drope.flip_step=1 --config.drope.recal_warmup_steps=0 --config.train.global_batch_size=8 \
    --config.model.scan_unroll=1 "--config.eval.lengths=(1,)" --config.eval.num_sequences=2 \
    > "$OUT/train_$SHAPE.log" 2>&1 || exit 1
fi
stamp "weights of $CONFIG ready"
for lengths in ${LENGTH_SETS:-1,2,4,8 16}; do
  name=${SHAPE}_${TAG:-}x${lengths//,/_}
  stamp "evaluate --lengths=$lengths"
  timeout ${EVAL_DEADLINE_S:-400} python launch/evaluate.py --workdir="$W" --methods=${METHODS:-drope,drope_raw,rope,pi,ntk,yarn} \
    --lengths=$lengths --tasks=ppl,niah --niah_samples=8 --batch_size=8 --out="$ROOT/eval_$name" \
    > "$OUT/eval_$name.log" 2>&1
  cp "$ROOT/eval_$name/results.json" "$OUT/results_$name.json" 2>/dev/null &&
    python -c "import json, sys; r = json.load(open(sys.argv[1])); print(sys.argv[2], r['timing'], r['seconds'])" \
      "$OUT/results_$name.json" "$lengths" | tee -a "$OUT/progress.log"
done
stamp "done"
