#!/usr/bin/env bash
# The science runs of docs/reproduction.md, end to end: stage the corpus, train the arms, evaluate them.
#
#   bash experiments/drope_small/run.sh [ARM ...]      (default: rope drope nope drope_qknorm)
#
# Idempotent: every stage is skipped once its output exists, and training runs under a deadline
# (SCIENCE_BUDGET_S seconds for this invocation), ending with SIGTERM, which checkpoints and exits;
# the same command continues where it stopped. Results are packed into $OUT/drope_small.tgz.
# SCIENCE_OVERRIDES (extra --config.* flags) shrinks the runs for a smoke test; TOKENIZER= (empty) trains
# a new tokenizer instead of using the committed one; NIAH_TEMPLATE=ruler asks RULER's English questions.
set -u -o pipefail
cd "$(dirname "$0")/../.."
ROOT=${SCIENCE_DIR:-/tmp/drope_small}
OUT=${OUT:-$ROOT/out}
deadline=$((SECONDS + ${SCIENCE_BUDGET_S:-570}))
ARMS=${*:-rope drope nope drope_qknorm}
CONFIG=experiments/drope_small/config.py
export JAX_COMPILATION_CACHE_DIR=$ROOT/jax_cache PYTHONUNBUFFERED=1
mkdir -p "$ROOT/logs" "$OUT"
left() { echo $((deadline - SECONDS)); }

declare -A METHODS=([rope]=rope,pi,ntk,yarn [drope]=drope [nope]=nope [drope_qknorm]=drope)

if [ ! -f "$ROOT/data/metadata.json" ]; then
  python experiments/drope_small/stage_corpus.py --out="$ROOT/stage" --tokenizer=${TOKENIZER-experiments/drope_small/tokenizer} \
    ${STAGE_FLAGS:-} 2>&1 | tee "$ROOT/logs/stage.log" &&
  python launch/prepare_data.py --input="$ROOT/stage/corpus/*.jsonl" --format=jsonl \
    --tokenizer="$ROOT/stage/tokenizer" --out="$ROOT/data" --val_fraction=0.01 2>&1 | tee "$ROOT/logs/prepare.log" ||
  exit 1
fi

for arm in $ARMS; do
  W=$ROOT/runs/$arm
  if [ ! -f "$W/eval.json" ]; then
    [ "$(left)" -gt 90 ] || break
    timeout -s TERM -k 60 $(($(left) - 60)) python launch/tpu_run.py --config=$CONFIG:$arm --workdir="$W" \
      --config.data.path="$ROOT/data" ${SCIENCE_OVERRIDES:-} 2>&1 | tee -a "$ROOT/logs/train_$arm.log"
    [ -f "$W/eval.json" ] || break  # stopped at the deadline: the next invocation resumes it
  fi
  if [ ! -f "$W/eval/results.json" ]; then
    [ "$(left)" -gt 60 ] || break
    timeout -s KILL $(left) python launch/evaluate.py --workdir="$W" --methods=${METHODS[$arm]} --lengths=1,2,4,8 \
      --tasks=ppl,niah --template=${NIAH_TEMPLATE:-code} --niah_samples=${NIAH_SAMPLES:-16} --batch_size=16 \
      --temperature=off 2>&1 | tee "$ROOT/logs/eval_$arm.log"
    [ -f "$W/eval/results.json" ] || break
  fi
done

# Small files only: the metrics, configs, evaluation results, logs and the tokenizer; no checkpoints.
(cd "$ROOT" && tar czf "$OUT/drope_small.tgz" logs data/metadata.json data/tokenizer \
  $(ls -d runs/*/metrics.jsonl runs/*/config.json runs/*/eval.json runs/*/eval/*.json 2>/dev/null))
for arm in $ARMS; do
  printf '%-13s %s\n' "$arm" "$( [ -f "$ROOT/runs/$arm/eval/results.json" ] && echo evaluated ||
    { [ -f "$ROOT/runs/$arm/eval.json" ] && echo trained || echo "in progress"; } )"
done
