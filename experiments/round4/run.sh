#!/usr/bin/env bash
# Round 4 of docs/reproduction.md, one budget at a time on one GPU machine (the arms: experiments/round4/config.py):
#
#   ROUND4_BUDGET=14 bash experiments/round4/run.sh                    # rope, the LR sweep, its two tails
#   ROUND4_BUDGET=24 ROUND4_LR_RATIO=R bash experiments/round4/run.sh  # rope and its two tails at ratio R
#   ROUND4_BUDGET=24 bash experiments/round4/run.sh nope alibi rnope_swa  # baselines, from scratch
#
# The whole round as docs/reproduction.md reports it, on one machine with no time limit (about 70 minutes of
# one H200, from the times measured on 2026-12-04, when each piece ran on a 30-minute machine; ALiBi and
# RNoPE-SWA at 14 because 24 did not fit one, as registered):
#   ROUND4_BUDGET=14 bash experiments/round4/run.sh && R=$(cat /tmp/round4/b14/ratio) &&
#   for b in 3.6 24; do ROUND4_BUDGET=$b ROUND4_LR_RATIO=$R bash experiments/round4/run.sh; done &&
#   ROUND4_BUDGET=24 bash experiments/round4/run.sh nope &&
#   ROUND4_BUDGET=14 bash experiments/round4/run.sh alibi rnope_swa
#
# 1. Stages the corpus (experiments/round4/stage_corpus.py, the committed tokenizer; whole directories held out).
# 2. Trains rope, then its tails from its checkpoints (which live only as long as the machine: rope and its
#    tails go in one go), while rope is evaluated beside them. At budget 14, without ROUND4_LR_RATIO, the
#    registered sweep first trains the 12.5% tail at each ratio of config.RATIOS and keeps the one with the
#    lowest held-out 1x perplexity (written to b14/ratio and progress.log: pass it to the other budgets).
# 3. Evaluates: rope with rope,pi,ntk,yarn; each tail with drope (the fitted temperature) and drope_raw; nope
#    with nope and nope_raw; alibi; rnope_swa. Lengths 1,2,4,8; held-out perplexity on the same text at every
#    length; NIAH in the code template, 48 prompts per (task, length, depth), four needles per multi-needle task.
# 4. Packs what it has into $OUT/round4.tgz (metrics, configs, evaluations, logs; no checkpoints) and runs
#    experiments/round4/report.py over every budget there.
# Every stage is skipped once its output exists: the same command continues a stopped run. ROUND4_DEADLINE_S
# ends a call: training stops by SIGTERM (a checkpoint; the next call resumes it) and no evaluation starts that
# would not end in time (ROUND4_EVAL_S, its expected seconds: 240, over twice the longest measured on one H200
# on 2026-12-04, 98 s for rope's four methods beside a training run). Or start it detached and follow it with
# experiments/round4/poll.sh. A CPU smoke test (about 3 minutes on 2 cores; then `... run.sh nope alibi`):
#   JAX_PLATFORMS=cpu SCIENCE_DIR=/tmp/r4smoke ROUND4_BUDGET=14 ROUND4_STEPS=24 STAGE_MB=4 VAL_FRACTION=0.3 \
#   NIAH_SAMPLES=2 EVAL_FLAGS="--lengths=1,2 --depths=0,1 --ppl_sequences=2 --temperature_sequences=2" \
#   ROUND4_OVERRIDES="--config.model.d_model=64 --config.model.num_layers=2 --config.model.num_heads=2 \
#   --config.model.num_kv_heads=2 --config.model.mlp_dim=128 --config.model.compute_dtype=float32 \
#   --config.model.scan_unroll=1 --config.data.seq_len=256 --config.train.global_batch_size=8 \
#   --config.eval.num_sequences=2 --config.eval.batch_size=2" bash experiments/round4/run.sh
set -u -o pipefail
cd "$(dirname "$0")/../.."
BUDGET=${ROUND4_BUDGET:?set ROUND4_BUDGET to one of 3.6, 14, 24, 34}
ROOT=${SCIENCE_DIR:-/tmp/round4}
B=$ROOT/b$BUDGET
export OUT=${OUT:-$ROOT/out}
CONFIG=experiments/round4/config.py
ARMS=${*:-rope drope_r12 drope_r25}
export JAX_COMPILATION_CACHE_DIR=$ROOT/jax_cache PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
mkdir -p "$ROOT/logs" "$B/logs" "$B/eval" "$OUT"
say() { echo "[$(date -u +%T) +${SECONDS}s] b$BUDGET: $*" | tee -a "$ROOT/progress.log"; }
left() { [ -n "${ROUND4_DEADLINE_S:-}" ] && echo $((ROUND4_DEADLINE_S - SECONDS)) || echo 999999; }
spec() { echo "$CONFIG:$1,budget=$BUDGET${2:+,ratio=$2}${ROUND4_STEPS:+,steps=$ROUND4_STEPS}"; }
# poll.sh waits for the line "run.sh exited", then packs $OUT; at once here
trap 'wait; say "run.sh exited"; bash experiments/round4/poll.sh 0 > /dev/null' EXIT

train() {  # NAME SPEC [--config.KEY=VALUE ...]: trains runs/NAME unless it finished; 1 when it did not finish
  local name=$1 spec=$2
  shift 2
  [ -f "$B/runs/$name/eval.json" ] && return 0
  [ "$(left)" -gt 120 ] || return 1
  say "training $name"
  XLA_PYTHON_CLIENT_MEM_FRACTION=${TRAIN_MEM:-0.4} timeout -s TERM -k 120 $(($(left) - 60)) python launch/tpu_run.py \
    --config="$spec" --workdir="$B/runs/$name" --config.data.path="$ROOT/data" ${ROUND4_OVERRIDES:-} "$@" \
    >> "$B/logs/train_$name.log" 2>&1
  if [ -f "$B/runs/$name/eval.json" ]; then say "trained $name"; else say "stopped $name"; return 1; fi
}

evaluate() {  # NAME WORKDIR METHODS: evaluates WORKDIR into eval/NAME unless done; a smaller batch on a failure
  local name=$1 workdir=$2 methods=$3 batch
  for batch in 16 4; do
    [ -f "$B/eval/$name/results.json" ] && return 0
    [ "$(left)" -gt "${ROUND4_EVAL_S:-240}" ] || { say "no time left to evaluate $name"; return 1; }
    say "evaluating $name ($methods, batch $batch)"
    XLA_PYTHON_CLIENT_MEM_FRACTION=0.18 timeout -s KILL $(left) python launch/evaluate.py --workdir="$workdir" \
      --out="$B/eval/$name" --methods="$methods" --lengths=1,2,4,8 --tasks=ppl,niah --template=code \
      --niah_samples=${NIAH_SAMPLES:-48} --niah_needles=4 --ppl_sequences=24 --temperature=fit \
      --batch_size=$batch ${EVAL_FLAGS:-} >> "$B/logs/eval_$name.log" 2>&1 &&
      say "evaluated $name" || say "FAILED evaluating $name (batch $batch)"
  done
}

final_ppl() {  # WORKDIR: a tail's held-out 1x perplexity in its run's final table (eval.json)
  python -c "import json, sys; p = json.load(open(sys.argv[1] + '/eval.json'))['perplexity']
v = next(v['1'] for k, v in p.items() if k.startswith('drope') and 'final' in k); print(v if v < float('inf') else 'inf')" "$1"
}

if [ ! -f "$ROOT/data/metadata.json" ]; then
  say "staging the corpus"
  python experiments/round4/stage_corpus.py --out="$ROOT/stage" --max_mb=${STAGE_MB:-1200} > "$ROOT/logs/stage.log" 2>&1 &&
  python launch/prepare_data.py --input="$ROOT/stage/corpus/*.jsonl" --format=jsonl --split_field=group \
    --tokenizer="$ROOT/stage/tokenizer" --out="$ROOT/data" --val_fraction=${VAL_FRACTION:-0.03} > "$ROOT/logs/prepare.log" 2>&1 ||
    { say "FAILED staging"; exit 1; }
  say "staged: $(tail -c 400 "$ROOT/logs/prepare.log" | tr '\r' '\n' | tail -1)"
fi

BRANCH=--config.branch_from=$B/runs/rope
declare -A METHODS=([nope]=nope,nope_raw [alibi]=alibi [rnope_swa]=rnope_swa)
pids=()
for arm in $ARMS; do
  case $arm in
    rope)
      train rope "$(spec rope)" || exit 0
      evaluate rope "$B/runs/rope" rope,pi,ntk,yarn & pids+=($!) ;;
    drope_r12|drope_r25)
      ratio=${ROUND4_LR_RATIO:-$(cat "$B/ratio" 2>/dev/null)}
      if [ -z "$ratio" ] && [ "$BUDGET" = 14 ]; then  # the registered sweep, on the 12.5% tail
        : > "$B/sweep.tmp"
        for r in $(python -c "import sys; sys.path.insert(0, 'experiments/round4'); import config
print(*config.RATIOS)"); do
          if train drope_r12_x$r "$(spec drope_r12 $r)" $BRANCH; then
            echo "$r $(final_ppl "$B/runs/drope_r12_x$r")" >> "$B/sweep.tmp"
          elif [ "$(left)" -gt 180 ]; then echo "$r inf" >> "$B/sweep.tmp"  # it failed (diverged): not chosen
          else exit 0; fi
        done
        sort -k2 -g "$B/sweep.tmp" | tee "$B/logs/sweep.txt" | head -1 | cut -d' ' -f1 > "$B/ratio" && rm "$B/sweep.tmp"
        ratio=$(cat "$B/ratio")
        say "the sweep (ratio, 1x held-out perplexity of the 12.5% tail): $(tr '\n' ';' < "$B/logs/sweep.txt") -> $ratio"
      fi
      [ -n "$ratio" ] || { say "set ROUND4_LR_RATIO (budget 14's sweep picks it)"; exit 1; }
      train ${arm}_x$ratio "$(spec $arm $ratio)" $BRANCH || exit 0
      evaluate $arm "$B/runs/${arm}_x$ratio" drope,drope_raw & pids+=($!) ;;
    nope|alibi|rnope_swa)
      train $arm "$(spec $arm)" || exit 0
      evaluate $arm "$B/runs/$arm" ${METHODS[$arm]} & pids+=($!) ;;
    *) say "unknown arm $arm: choose from rope drope_r12 drope_r25 nope alibi rnope_swa"; exit 1 ;;
  esac
done
wait "${pids[@]}"
python experiments/round4/report.py --root="$ROOT" --out="$ROOT/report" >> "$ROOT/progress.log" 2>&1 &&
  say "report: $ROOT/report/report.md" || say "no report yet"
say "done: $ARMS"
