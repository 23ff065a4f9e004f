#!/usr/bin/env bash
# One device call: the JAX train step on the 0.5B config under a few remat policies, then the HF peer.
# Usage (repo root, on the GPU machine): bash bench/gpu_perf.sh [jax|peer|all] ; writes $OUT/*.log
set -u
what=${1:-all}
out=${OUT:-/tmp}
export PYTHONPATH=$PWD:${PYTHONPATH:-} XLA_PYTHON_CLIENT_MEM_FRACTION=0.92
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import jax, flax, optax, orbax.checkpoint as o; print('jax', jax.__version__, 'flax', flax.__version__, 'optax', optax.__version__, 'orbax', o.__version__)"
if [ "$what" = jax ] || [ "$what" = all ]; then
  for args in "${JAX_VARIANTS[@]:---config.train.global_batch_size=32 --config.data.seq_len=1024 --config.model.remat=none}"; do
    echo "== jax $args"
    python3 launch/benchmark.py --config=configs/0p5b_16b.py $args --steps=15 2>&1 | grep -v -i warn | tail -4 | tee -a "$out/jax.log"
  done
fi
if [ "$what" = peer ] || [ "$what" = all ]; then
  echo "== peer"
  python3 bench/hf_peer.py --seq_len=1024 --batch=32 --steps=15 2>&1 | tail -3 | tee -a "$out/peer.log"
fi
