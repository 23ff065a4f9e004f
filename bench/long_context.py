"""The 0.5B model's evaluation forward at long contexts: tokens/s and peak memory, one sequence at a time.

  python bench/long_context.py [--config=configs/0p5b_16b.py] [--lengths=8192,16384,32768] [--pos=nope]

Runs ``drope_jax.eval.perplexity.position_nll`` (the evaluator's own forward + per-token loss) on random
tokens with random weights; the median of 5 timed calls after a warm-up.
"""

import argparse
import functools

import jax
import numpy as np

from drope_jax.eval import perplexity
from drope_jax.model.positions import NOPE, ROPE
from drope_jax.run_config import load_module
from drope_jax.train.setup import make_setup

from timing import median_ms


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--config", default="configs/0p5b_16b.py")  # docs/performance.md: configs/0p5b_16b_wsd.py
    p.add_argument("--lengths", default="8192,16384,32768")
    p.add_argument("--pos", default="nope", choices=["rope", "nope"])
    args = p.parse_args()
    module = load_module(args.config)
    setup = make_setup(module.get_config())
    pos = NOPE if args.pos == "nope" else ROPE
    rng = np.random.default_rng(0)
    with jax.set_mesh(setup.mesh):
        params = setup.fresh_state()["params"]
        for length in map(int, args.lengths.split(",")):
            tokens = rng.integers(0, setup.plan.model.vocab_size, (1, length + 1), dtype=np.int32)
            ms = median_ms(functools.partial(perplexity.position_nll, batch_size=1), setup.spec, params, tokens, pos,
                           calls=5, warmup=1)
            peak = max((d.memory_stats() or {}).get("peak_bytes_in_use", 0) for d in jax.local_devices())
            print(f"{jax.devices()[0].device_kind} | {args.pos} forward at {length:,} tokens: "
                  f"{ms:.1f} ms, {length / ms * 1e3:,.0f} tokens/s, "
                  f"peak memory {peak / 2**30:.1f} GiB", flush=True)


if __name__ == "__main__":
    main()
