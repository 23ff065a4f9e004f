#!/usr/bin/env bash
# Driver for device calls, run from the repo root on the GPU machine; logs go to $OUT.
#   bash bench/gpu_perf.sh jax "--config.model.remat=none" "--config.model.remat=dots" ...
#       the real train step on configs/0p5b_16b.py, seq 1024 x batch 32 per GPU unless overridden
#   bash bench/gpu_perf.sh peer [hf_peer.py args]
set -u
what=$1; shift
out=${OUT:-/tmp}
export PYTHONPATH=$PWD:${PYTHONPATH:-}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import jax, flax, optax, orbax.checkpoint as o; print('jax', jax.__version__, 'flax', flax.__version__, 'optax', optax.__version__, 'orbax', o.__version__, jax.devices())"
if [ "$what" = jax ]; then
  for args in "$@"; do
    echo "== jax $args"
    python3 launch/benchmark.py --config=configs/0p5b_16b.py --config.train.global_batch_size=32 \
      --config.data.seq_len=1024 $args --steps=15 2>&1 | grep -v -i warn | tail -4 | tee -a "$out/jax.log"
  done
elif [ "$what" = peer ]; then
  python3 bench/hf_peer.py "$@" 2>&1 | tail -3 | tee -a "$out/peer.log"
fi
