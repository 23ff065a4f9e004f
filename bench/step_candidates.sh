#!/usr/bin/env bash
# The step's open candidates on one GPU, in one call (about 9 minutes; docs/performance.md, "The last 1%"):
#   1. bench/norm_kernels.py: the residual add + RMSNorm's forward and backward kernels over their blocks and warps,
#      against XLA, at the attention's norm (3 input gradients) and the MLP's (2);
#   2. bench/step_variants.py: the library's step against the same step with the norm's forward kernel
#      (norm_forward_kernel) and with the skipped update as a lax.cond (cond_skip, the library before), and the
#      PyTorch peer, in paired rounds, each step waited for and back to back.
#
#   bash bench/step_candidates.sh [STEP_VARIANTS]    (repo root on the GPU machine; logs in $OUT)
set -u -o pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/step_candidates}
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD:${PYTHONPATH:-}
mkdir -p "$OUT"
(cd bench && timeout 200 python3 norm_kernels.py --copies=3 && timeout 120 python3 norm_kernels.py --copies=2) 2>&1 \
  | grep -v -i warn | tee "$OUT/1_norm_kernels.log"
timeout 420 python3 bench/step_variants.py --variants="${1:-base,norm_forward_kernel,cond_skip}" --peer \
  --timing=both --rounds=4 2>&1 | grep -v -i warn | tee "$OUT/2_step_variants.log"
