#!/usr/bin/env bash
# The paper's Table 4 shape (configs/0p5b_16b.py) on one H200, each figure in one call with its peer:
#   1. the train step at seq 1024 x batch 32 as configured, and without its Pallas kernels (xla_kernels),
#      against transformers' Qwen2ForCausalLM of the same shape (bench/hf_peer.py --shape=0p5b_16b), all three
#      interleaved in rounds in one process (bench/step_variants.py --peer): step times and the peer's over
#      ours, per round;
#   2. the real loop (launch/tpu_run.py on prepared data, batch 32): 25 RoPE steps, the flip (a checkpoint,
#      fresh AdamW moments, the NoPE step's compilation), 25 NoPE steps; tokens/s every 5 steps from
#      metrics.jsonl, the medians of the steady intervals of each phase, and what the flip's interval cost.
#
#   bash bench/table4_h200.sh          (repo root on the device machine; logs and metrics.jsonl in $OUT)
#
# Needs jax, flax, optax, orbax, transformers and torch, plus grain, ml_collections, array_record,
# tensorboardX and portpicker on PYTHONPATH. The data (2.: the code corpus and tokenizer of
# experiments/drope_small, token ids far below the 151,936 vocab, which speed does not depend on) is
# staged on the CPU while the GPU runs 1. Every stage has a deadline and logs as it goes, so a call that
# runs out of time returns what it measured; about 7-9 minutes in all.
set -u -o pipefail
cd "$(dirname "$0")/.."
ROOT=${BENCH_DIR:-/tmp/table4_h200}
OUT=${OUT:-$ROOT/out}
export OUT PYTHONUNBUFFERED=1 PYTHONPATH=$PWD:${PYTHONPATH:-}
mkdir -p "$ROOT" "$OUT"
stamp() { echo "[$(date +%T) +${SECONDS}s] $*" | tee -a "$OUT/progress.log"; }

stage_data() {
  [ -f "$ROOT/data/metadata.json" ] && return 0
  timeout 180 python3 experiments/drope_small/stage_corpus.py --out="$ROOT/stage" \
    --tokenizer=experiments/drope_small/tokenizer --max_mb=16 > "$OUT/stage.log" 2>&1 &&
  timeout 180 python3 launch/prepare_data.py --input="$ROOT/stage/corpus/*.jsonl" --format=jsonl \
    --tokenizer="$ROOT/stage/tokenizer" --out="$ROOT/data" --val_fraction=0.05 > "$OUT/prepare.log" 2>&1
}
stage_data & data_pid=$!

stamp "1. train step: configs/0p5b_16b.py at 1024 x 32, with and without its kernels, and the peer, interleaved"
timeout 420 python3 bench/step_variants.py --variants=base,xla_kernels --peer --rounds=5 2>&1 | grep -v -i warn \
  > "$OUT/step_paired.log"
grep -v RESULT "$OUT/step_paired.log" | tail -4 | tee -a "$OUT/progress.log"

wait $data_pid || { stamp "data preparation failed: see $OUT/stage.log, $OUT/prepare.log"; exit 1; }
stamp "2. the real loop with a flip: 50 steps of 32 x 1024, flip at step 25"
W=$ROOT/run
rm -rf "$W"
timeout 330 python3 launch/tpu_run.py --config=configs/0p5b_16b.py --workdir="$W" --config.data.path="$ROOT/data" \
  --config.train.total_tokens=None --config.train.total_steps=50 --config.drope.flip_tokens=None \
  --config.drope.flip_step=25 --config.optim.warmup_steps=5 --config.drope.recal_warmup_steps=5 \
  --config.train.global_batch_size=32 --config.log.every_steps=5 --config.checkpoint.every_steps=1000 \
  "--config.eval.lengths=(1,)" --config.eval.num_sequences=2 > "$OUT/loop.log" 2>&1
stamp "tpu_run exit status $?"
cp "$W/metrics.jsonl" "$OUT/loop_metrics.jsonl" 2>/dev/null
JAX_PLATFORMS=cpu python3 - "$OUT/loop_metrics.jsonl" <<'EOF' | tee -a "$OUT/progress.log"
import json, statistics, sys
from drope_jax.run_config import load_module, make_plan
from drope_jax.train import metrics
model = make_plan(load_module("configs/0p5b_16b.py").get_config()).model
with_head = metrics.flops_per_token(model, 1024, lm_head=True) / metrics.flops_per_token(model, 1024)
rows = [r for r in map(json.loads, open(sys.argv[1])) if "tokens_per_sec" in r]
for r in rows:
    mfu = r.get("mfu", float("nan"))
    print(f"step {r['step']:>3} {r['phase']} loss {r['loss']:.3f} lr {r['lr']:.2e} "
          f"{r['tokens_per_sec']:,.0f} tokens/s MFU {mfu:.1%} ({mfu * with_head:.1%} with the LM head)")
# steady intervals: not the first (compilation), not the two around the flip (steps 21-30: the flip-step
# checkpoint, fresh moments and the NoPE step's compilation land in one of them)
for phase, steps in (("rope", range(10, 21)), ("nope", range(35, 51))):
    rates = [r["tokens_per_sec"] for r in rows if r["step"] in steps]
    if rates:
        print(f"{phase}: median {statistics.median(rates):,.0f} tokens/s over {len(rates)} intervals of 5 steps")
steady = [r["tokens_per_sec"] for r in rows if r["step"] in range(35, 51)]
around = [r for r in rows if r["step"] in (25, 30)]
if around and steady:
    extra = sum(5 * 32 * 1024 / r["tokens_per_sec"] - 5 * 32 * 1024 / statistics.median(steady) for r in around)
    print(f"the flip's two intervals (steps 21-30) took {extra:.1f} s more than two steady ones")
EOF
stamp "done"
