#!/usr/bin/env bash
# Driver for device calls, run from the repo root on the GPU machine; logs go to $OUT.
#   bash bench/gpu_perf.sh jax "--config.model.remat=none" "--config.model.remat=dots" ...
#       the real train step on $CONFIG (default configs/0p5b_16b.py, the paper's Table 4 shape), seq 1024 x
#       batch 32 unless overridden; CONFIG=configs/0p5b_16b_wsd.py for the shape measured before 2026-12-04
#   bash bench/gpu_perf.sh peer [hf_peer.py args, e.g. --shape=0p5b_16b_wsd]
set -u
what=$1; shift
out=${OUT:-/tmp}
config=${CONFIG:-configs/0p5b_16b.py}
export PYTHONPATH=$PWD:${PYTHONPATH:-}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import jax, flax, optax, orbax.checkpoint as o; print('jax', jax.__version__, 'flax', flax.__version__, 'optax', optax.__version__, 'orbax', o.__version__, jax.devices())"
if [ "$what" = jax ]; then
  for args in "$@"; do
    echo "== jax $args"
    python3 launch/benchmark.py --config="$config" --config.train.global_batch_size=32 \
      --config.data.seq_len=1024 $args --steps=15 2>&1 | grep -v -i warn | tail -4 | tee -a "$out/jax.log"
  done
elif [ "$what" = peer ]; then
  python3 bench/hf_peer.py "$@" 2>&1 | tail -3 | tee -a "$out/peer.log"
fi
