"""Time the real train step on synthetic tokens.

  python launch/benchmark.py --config=configs/0p5b_16b.py --config.train.global_batch_size=32 \
      [--config.data.seq_len=1024] [--config.model.remat=dots] [--steps=20] [--phase=rope] [--profile_dir=DIR]

Prints tokens/s (total and per device), the median step time of the timed steps after
warm-up, MFU (PaLM formula over the chip's bf16 peak; also with the LM head's 6·d·V FLOPs per token,
which PaLM's count leaves out) and peak device memory.
"""

import json
import statistics
import sys
import time

import jax
import numpy as np
from absl import app, flags, logging
from ml_collections import config_flags

from drope_jax import distributed, sharding
from drope_jax.errors import ConfigError
from drope_jax.launch_utils import parse_flags_or_exit
from drope_jax.train import metrics
from drope_jax.train.setup import make_setup

_CONFIG = config_flags.DEFINE_config_file("config", "configs/0p5b_16b.py", "Run config file.")
_STEPS = flags.DEFINE_integer("steps", 20, "Timed steps (at least 10).")
_WARMUP = flags.DEFINE_integer("warmup", 3, "Untimed steps first (compilation, autotuning).")
_PHASE = flags.DEFINE_enum("phase", "rope", ["rope", "nope"], "Which phase's step to time.")
PROFILED_STEPS = 3  # bench/profile_summary.py's default --steps
_PROFILE_DIR = flags.DEFINE_string("profile_dir", "", f"If set, trace {PROFILED_STEPS} more steps there after "
                                   "timing (summarize with bench/profile_summary.py).")


def benchmark(config, steps: int, warmup: int, phase: str, profile_dir: str = "") -> dict:
    setup = make_setup(config)
    plan, mesh = setup.plan, setup.mesh
    seq_len, batch = config.data.seq_len, config.train.global_batch_size
    rng = np.random.default_rng(0)
    local_rows = batch // jax.process_count()
    with jax.set_mesh(mesh):
        state = setup.fresh_state()
        step_fn = setup.phase_step(phase)
        batches = [{"tokens": sharding.host_batch_to_global(
            rng.integers(0, plan.model.vocab_size, (local_rows, seq_len + 1), dtype=np.int32), mesh)}
            for _ in range(2)]  # rotate inputs so no step reuses the previous one's buffers
        for i in range(warmup):
            state, m = step_fn(state, batches[i % 2])
        jax.block_until_ready(m)
        times = []
        for i in range(steps):
            start = time.perf_counter()
            state, m = step_fn(state, batches[i % 2])
            jax.block_until_ready(m)
            times.append(time.perf_counter() - start)
        if profile_dir:
            with jax.profiler.trace(profile_dir):
                for i in range(PROFILED_STEPS):
                    state, m = step_fn(state, batches[i % 2])
                jax.block_until_ready(m)
    step_time = statistics.median(times)
    tokens_per_sec = batch * seq_len / step_time
    mfu = metrics.mfu(tokens_per_sec, plan.model, seq_len, jax.device_count())
    mfu_head = metrics.mfu(tokens_per_sec, plan.model, seq_len, jax.device_count(), lm_head=True)
    peak = max((d.memory_stats() or {}).get("peak_bytes_in_use", 0) for d in jax.local_devices())
    return {"device": jax.devices()[0].device_kind, "devices": jax.device_count(), "mesh": dict(mesh.shape),
            "seq_len": seq_len, "global_batch": batch, "remat": plan.model.remat, "phase": phase,
            "step_time_s": step_time, "step_time_min_s": min(times), "step_time_max_s": max(times),
            "tokens_per_sec": tokens_per_sec, "tokens_per_sec_per_device": tokens_per_sec / jax.device_count(),
            "mfu": mfu, "mfu_with_lm_head": mfu_head, "peak_memory_gib": peak / 2**30, "final_loss": float(m["loss"])}


def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)
    distributed.initialize_if_needed()
    if _STEPS.value < 10:
        sys.exit("error: --steps must be at least 10 (the median needs them)")
    try:
        r = benchmark(_CONFIG.value, _STEPS.value, _WARMUP.value, _PHASE.value, _PROFILE_DIR.value)
    except ConfigError as e:
        sys.exit(f"error: {e}")
    if jax.process_index() == 0:
        mfu = "n/a (unknown chip peak)" if r["mfu"] is None else \
            f"{r['mfu']:.1%} ({r['mfu_with_lm_head']:.1%} with the LM head)"
        print(f"{r['device']} x{r['devices']} mesh {r['mesh']} | seq {r['seq_len']} x batch {r['global_batch']} | "
              f"remat {r['remat']} | {r['phase']}")
        print(f"step {r['step_time_s'] * 1e3:.1f} ms (median of {_STEPS.value}; min {r['step_time_min_s'] * 1e3:.1f}, "
              f"max {r['step_time_max_s'] * 1e3:.1f}) | {r['tokens_per_sec']:,.0f} tokens/s | "
              f"{r['tokens_per_sec_per_device']:,.0f} tokens/s/device | MFU {mfu} | "
              f"peak memory {r['peak_memory_gib']:.1f} GiB")
        print("RESULT " + json.dumps(r))


if __name__ == "__main__":
    app.run(main, flags_parser=parse_flags_or_exit)
