#!/usr/bin/env bash
# A minute's check of ALiBi on cuDNN before round 4's ALiBi run: a tiny bf16 ALiBi model (configs/tiny.py,
# 20 steps at 256 tokens) trains and is evaluated at 1x to 8x, perplexity and NIAH, as run.sh evaluates it.
# It checks that nothing fails, not the scores. Run from the repository root; DIR defaults to /tmp/alibi_smoke.
set -euo pipefail
DIR=${1:-/tmp/alibi_smoke}
rm -rf "$DIR"
python launch/tpu_run.py --config=configs/tiny.py --workdir="$DIR" --config.model.compute_dtype=bfloat16 \
  --config.positions.kind=alibi --config.drope.flip_step=None --config.drope.rope_control=False \
  --config.train.total_steps=20 --config.optim.warmup_steps=5 --config.checkpoint.every_steps=20 \
  --config.data.seq_len=256 --config.train.global_batch_size=16 2>&1 | tail -3
python launch/evaluate.py --workdir="$DIR" --methods=alibi --lengths=1,2,4,8 --tasks=ppl,niah --template=code \
  --niah_samples=2 --niah_needles=4 --ppl_sequences=4 --batch_size=4 2>&1 | tail -1
grep "^| alibi |" "$DIR/eval/report.md"
