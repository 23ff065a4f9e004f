"""Where the train step's time goes: forward, forward+backward, the LM head + loss, and the whole step.

  python bench/step_breakdown.py [--config=configs/0p5b_16b.py] [--remat=dots_no_batch] [--batch=32] [--seq_len=1024]

Each part is jitted on its own and timed as a median of 10 runs after 3 warm-ups, on the 0.5B
config (docs/performance.md's table was measured on configs/0p5b_16b_wsd.py). Used to decide what to
optimise; the headline numbers come from launch/benchmark.py.
"""

import argparse
import functools

import jax
import jax.numpy as jnp
import numpy as np

from drope_jax import sharding
from drope_jax.model.loss import token_nll
from drope_jax.model.positions import ROPE
from drope_jax.run_config import load_module
from drope_jax.train.setup import make_setup
from drope_jax.train.step import loss_fn

from timing import median_ms


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--config", default="configs/0p5b_16b.py")
    p.add_argument("--remat", default="dots_no_batch")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--seq_len", type=int, default=1024)
    args = p.parse_args()
    config = load_module(args.config).get_config()
    config.model.remat = args.remat
    config.train.global_batch_size = args.batch
    config.data.seq_len = args.seq_len
    setup = make_setup(config)
    rng = np.random.default_rng(0)
    with jax.set_mesh(setup.mesh):
        state = setup.fresh_state()
        tokens = sharding.host_batch_to_global(
            rng.integers(0, config.model.vocab_size, (args.batch, args.seq_len + 1), dtype=np.int32), setup.mesh)
        batch = {"tokens": tokens}
        params = state["params"]
        lf = functools.partial(loss_fn, spec=setup.spec, pos=ROPE, use_qk_norm=True)
        fwd = jax.jit(lf)
        fwd_bwd = jax.jit(jax.grad(lf))
        d = config.model.d_model
        x = jnp.asarray(rng.standard_normal((args.batch, args.seq_len, d)), jnp.bfloat16)

        def head_loss(head_DV, x_BTD):
            logits = jnp.einsum("BTD,DV->BTV", x_BTD, head_DV.astype(jnp.bfloat16))
            return jnp.mean(token_nll(logits, tokens[:, 1:]))

        head = jax.jit(jax.grad(head_loss, argnums=(0, 1)))
        lm_head_DV = params["embed_VD"].T if config.model.tie_embeddings else params["lm_head_DV"]
        step = setup.phase_step("rope")
        rows = {
            "forward (loss)": median_ms(fwd, params, batch),
            "forward+backward": median_ms(fwd_bwd, params, batch),
            "LM head + loss, fwd+bwd": median_ms(head, lm_head_DV, x),
        }

        step_state = [state]

        def run_step():  # each step continues from the last one's (donated) state
            step_state[0], m = step(step_state[0], batch)
            return m

        rows["whole train step"] = median_ms(run_step)
        cost = step.lower(state, batch).compile().cost_analysis()
        cost = cost[0] if isinstance(cost, list) else cost
        print(f"compiled step: {cost.get('flops', 0) / 1e12:.1f} TFLOP, "
              f"{cost.get('bytes accessed', 0) / 1e9:.1f} GB accessed (XLA's estimate)")
    print(f"{jax.devices()[0].device_kind} | remat {args.remat} | batch {args.batch} x seq {args.seq_len}")
    for k, v in rows.items():
        print(f"  {k:<28} {v:8.1f} ms")


if __name__ == "__main__":
    main()
