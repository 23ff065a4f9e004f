#!/usr/bin/env bash
# The step's candidates on one GPU (docs/performance.md, "The last 1%", which has their timings of 2026-12-05, the
# kernel sweeps' included), in calls of at most 8 minutes:
#   bash bench/step_candidates.sh kernels   the kernels alone, against XLA, over their launch parameters:
#       bench/norm_kernels.py (the residual add + RMSNorm, forward and backward, at the attention's norm with 3 input
#       gradients and the MLP's with 2) and bench/mlp_kernels.py's forward (silu(gate) * up);
#   bash bench/step_candidates.sh step      the library's step against the same step without XLA's command buffers
#       (CUDA graphs), without the norm's forward kernel, and with the query, key and value as three products (the
#       forward kernel and the one product are the library's since they were timed), and the PyTorch peer:
#       bench/step_variants.py in paired rounds, each step waited for and back to back, then a trace of 3 steps of
#       each variant, summed by bench/profile_summary.py;
#   bash bench/step_candidates.sh step \
#       'base,mlp_forward_kernel,select_skip,xla:xla_gpu_enable_command_buffer=FUSION|CUBLAS|CUBLASLT|CUSTOM_CALL|CUDNN|DYNAMIC_SLICE_FUSION|CONDITIONAL'
#       the same for the next in line: the SwiGLU's forward kernel, and two ways around the host's wait at the
#       skipped update's cond (a select; the cond inside a CUDA graph, as a conditional node: XLA's default kinds
#       of command, as its flags list them, and CONDITIONAL);
#   then, if time is left: step base,xla:xla_gpu_enable_cublaslt,gate_up_fused (the profile's 531 memsets a step,
#       2.65 ms, may be cuBLAS's);
#   bash bench/step_candidates.sh confirm   the library as committed against the peer, beside the library without
#       each of its last two changes (the three products apart; the norm's first launch) and without both, then the
#       quickstart through launch/tpu_run.py: about 6 minutes.
# Repo root on the GPU machine; logs in $OUT.
set -u -o pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/step_candidates}
ROOT=${BENCH_DIR:-/tmp/step_candidates_work}
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD:${PYTHONPATH:-}
mkdir -p "$OUT" "$ROOT"
case "${1:-}" in
  kernels)
    (cd bench && timeout 240 python3 norm_kernels.py --copies=3 && \
      timeout 150 python3 norm_kernels.py --passes=backward --copies=2 && \
      timeout 60 python3 mlp_kernels.py --passes=forward) 2>&1 | grep -v -i warn | tee "$OUT/1_kernels.log" ;;
  step)
    variants=${2:-base,xla:xla_gpu_enable_command_buffer=,norm_xla_forward,qkv_separate}
    rm -rf "$ROOT/prof"
    timeout 480 python3 bench/step_variants.py --variants="$variants" --peer --timing=both --rounds=4 \
      --profile_dir="$ROOT/prof" 2>&1 | grep -v -i warn | tee "$OUT/2_step_variants.log"
    for v in ${variants//,/ }; do
      timeout 60 python3 bench/profile_summary.py "$ROOT/prof/$v" --top=25 > "$OUT/3_profile_${v//[^A-Za-z0-9_]/_}.txt" 2>&1
    done
    head -30 "$OUT/3_profile_base.txt" ;;
  confirm)
    timeout 400 python3 bench/step_variants.py --variants=base,qkv_separate,norm_launch_8,norm_launch_8_separate \
      --peer --timing=both --rounds=5 2>&1 | grep -v -i warn | tee "$OUT/4_confirm_step.log"
    rm -rf "$ROOT/tiny"
    timeout 120 python3 launch/tpu_run.py --config=configs/tiny.py --workdir="$ROOT/tiny" 2>&1 | grep -v -i warn \
      | tee "$OUT/5_confirm_tiny.log" | tail -8 ;;
  *) echo "usage: bash bench/step_candidates.sh kernels | step [VARIANTS] | confirm" >&2; exit 2 ;;
esac
