#!/usr/bin/env bash
# The step's open candidates on one GPU (docs/performance.md, "The last 1%"), in two calls:
#   bash bench/step_candidates.sh norm      about 5 minutes: bench/norm_kernels.py, the residual add + RMSNorm's
#       forward and backward kernels over their launches (rows a program, rows at a time, warps) against XLA, at
#       the attention's norm (3 input gradients) and the MLP's (2);
#   bash bench/step_candidates.sh step [VARIANTS]   about 8 minutes: bench/step_variants.py, the library's step
#       against the same step with the norm's forward kernel (norm_forward_kernel), with the query, key and value as
#       one product reading one copy of the norm (qkv_fused), and without XLA's command buffers (CUDA graphs), and
#       the PyTorch peer, in paired rounds, each step waited for and back to back; then a trace of 3 steps of each
#       variant, summed by bench/profile_summary.py. Next in line: select_skip, gate_up_fused,
#       xla:xla_gpu_enable_cublaslt (the profile's 531 memsets a step, 2.65 ms, may be cuBLAS's).
# Repo root on the GPU machine; logs in $OUT.
set -u -o pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/step_candidates}
ROOT=${BENCH_DIR:-/tmp/step_candidates_work}
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD:${PYTHONPATH:-}
mkdir -p "$OUT" "$ROOT"
case "${1:-}" in
  norm)
    (cd bench && timeout 300 python3 norm_kernels.py --copies=3 && \
      timeout 200 python3 norm_kernels.py --passes=backward --copies=2) \
      2>&1 | grep -v -i warn | tee "$OUT/1_norm_kernels.log" ;;
  step)
    variants=${2:-base,norm_forward_kernel,qkv_fused,xla:xla_gpu_enable_command_buffer=}
    rm -rf "$ROOT/prof"
    timeout 540 python3 bench/step_variants.py --variants="$variants" --peer --timing=both --rounds=4 \
      --profile_dir="$ROOT/prof" 2>&1 | grep -v -i warn | tee "$OUT/2_step_variants.log"
    for v in ${variants//,/ }; do
      timeout 60 python3 bench/profile_summary.py "$ROOT/prof/$v" --top=25 > "$OUT/3_profile_${v//[^A-Za-z0-9_]/_}.txt" 2>&1
    done
    head -30 "$OUT/3_profile_base.txt" ;;
  *) echo "usage: bash bench/step_candidates.sh norm | step [VARIANTS]" >&2; exit 2 ;;
esac
