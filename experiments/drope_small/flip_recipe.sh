#!/usr/bin/env bash
# The flip recipe at 44M parameters (issue 13): one RoPE run, and DroPE tails branched from its
# checkpoint at 2/3 of the budget, with and without QK-norm switched on at the flip.
#
#   bash experiments/drope_small/flip_recipe.sh          (on the GPU machine; results in $OUT)
#
# Same 44M model and 60M-token corpus as the calibration run of issue 14 (stage_corpus --max_mb=200),
# 2,400 steps of 65,536 tokens, WSD decaying over the last 400. The tails recalibrate for 800 steps
# with fresh moments and their own schedule: 50 warm-up steps, constant, decay over the last 400.
set -u -o pipefail
cd "$(dirname "$0")/../.."
ROOT=${SCIENCE_DIR:-/tmp/flip_recipe}
OUT=${OUT:-$ROOT/out}
CONFIG=experiments/drope_small/config.py
export PYTHONUNBUFFERED=1 JAX_COMPILATION_CACHE_DIR=$ROOT/jax_cache
mkdir -p "$ROOT/logs" "$OUT"
COMMON=(--config.train.total_steps=2400 --config.optim.decay_fraction=0.1667 --config.data.path="$ROOT/data"
        "--config.eval.lengths=(1,2,4,8)" --config.eval.every_steps=400)
TAIL=(--config.drope.flip_step=1600 --config.branch_from="$ROOT/runs/rope" --config.drope.flip_in_decay=False
      --config.drope.recal_warmup_steps=50 --config.drope.recal_decay_fraction=0.5 --config.drope.reset_opt_state=True)

if [ ! -f "$ROOT/data/metadata.json" ]; then
  python experiments/drope_small/stage_corpus.py --out="$ROOT/stage" --tokenizer=experiments/drope_small/tokenizer \
    --max_mb=200 > "$ROOT/logs/stage.log" 2>&1 &&
  python launch/prepare_data.py --input="$ROOT/stage/corpus/*.jsonl" --format=jsonl \
    --tokenizer="$ROOT/stage/tokenizer" --out="$ROOT/data" --val_fraction=0.01 > "$ROOT/logs/prepare.log" 2>&1 || exit 1
fi
echo "data ready at ${SECONDS}s"
python launch/tpu_run.py --config=$CONFIG:rope --workdir="$ROOT/runs/rope" "${COMMON[@]}" \
  "--config.checkpoint.keep_steps=(1600,)" > "$ROOT/logs/train_rope.log" 2>&1 || { tail -20 "$ROOT/logs/train_rope.log"; exit 1; }
echo "rope trained at ${SECONDS}s"
export XLA_PYTHON_CLIENT_MEM_FRACTION=0.45
python launch/tpu_run.py --config=$CONFIG:drope --workdir="$ROOT/runs/drope" "${COMMON[@]}" "${TAIL[@]}" \
  > "$ROOT/logs/train_drope.log" 2>&1 &
python launch/tpu_run.py --config=$CONFIG:drope_qknorm --workdir="$ROOT/runs/drope_qknorm" "${COMMON[@]}" "${TAIL[@]}" \
  > "$ROOT/logs/train_drope_qknorm.log" 2>&1 &
wait
echo "tails trained at ${SECONDS}s"
for arm in drope drope_qknorm; do
  python launch/evaluate.py --workdir="$ROOT/runs/$arm" --methods=drope,drope_logn --tasks=ppl --lengths=1,2,4,8 \
    --batch_size=16 --temperature=off > "$ROOT/logs/eval_$arm.log" 2>&1 &
done
wait
python - "$ROOT" <<'PY'
import json, sys, pathlib
import numpy as np, orbax.checkpoint as ocp
root = pathlib.Path(sys.argv[1])
ckpt = root / "runs/drope_qknorm/checkpoints/2400/state"
attn = ocp.PyTreeCheckpointer().restore(str(ckpt))["params"]["blocks"]["attn"]
gains = {n: {"mean_abs": np.abs(np.asarray(attn[n]["weight"])).mean(-1).round(3).tolist(),
             "max_abs": np.abs(np.asarray(attn[n]["weight"])).max(-1).round(3).tolist()} for n in ("q_norm", "k_norm")}
(root / "out_gains.json").write_text(json.dumps(gains, indent=1))
print("QK-norm gains per layer:", json.dumps(gains))
PY
cd "$ROOT" && tar czf "$OUT/flip_recipe.tgz" logs out_gains.json runs/*/metrics.jsonl runs/*/config.json runs/*/eval.json \
  runs/*/eval/*.json 2>/dev/null
for arm in rope drope drope_qknorm; do echo "== $arm"; grep -A5 "held-out perplexity" "$ROOT/logs/train_$arm.log"; done
for arm in drope drope_qknorm; do echo "== eval $arm"; grep -i -A8 "perplexity" "$ROOT/logs/eval_$arm.log" | tail -8; done
echo "done at ${SECONDS}s"
