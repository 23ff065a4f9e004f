"""The whole train step with the transformer's body written other ways, timed in one process on one GPU.

  python bench/step_variants.py [--config=configs/0p5b_16b.py] [--batch=32] [--seq_len=1024] [--steps=15]

docs/performance.md's profile of the Table 4 step puts about 20 ms in the SwiGLU's element-wise work, and the
key and value projections are small matrix products (896 x 128 each).
Each variant replaces one method of the model for the duration of its run, then launch/benchmark.py's
`benchmark` times the step (median after warm-up); `base` runs first and last, so its two figures show
the drift over the call:
- `qkv_fused`: one matrix product with the query, key and value weights concatenated on the fly
  ([896, 1152]), its output split; the parameters and checkpoints are unchanged;
- `swiglu_vjp`: silu(gate) * up with a hand-written backward (one pass over gate, up and the incoming
  gradient, writing both gradients) instead of autodiff's;
- `both`.
(The loss's kernels are a config setting, not a variant here: `launch/benchmark.py ...
--config.model.loss_backend=xla` times the step without them.)
Every variant starts from the same initialization and data, so its loss after the timed steps must equal the
first variant's (to 2e-3 relative); the bench stops with an error where it does not.
tests/test_step_variants_bench.py checks the two rewrites against the model on CPU.
"""

import argparse
import contextlib
import json
import pathlib
import sys

import jax
import jax.numpy as jnp

from drope_jax import sharding
from drope_jax.model import transformer
from drope_jax.run_config import load_module


def project_qkv_fused(self, x_BTD):
    dt = x_BTD.dtype
    d, n, h = self.q_DNH.shape
    k = self.k_DKH.shape[1]
    qkv_DC = jnp.concatenate([self.q_DNH[...].reshape(d, n * h), self.k_DKH[...].reshape(d, k * h),
                              self.v_DKH[...].reshape(d, k * h)], axis=1).astype(dt)
    qkv_BTC = jnp.einsum("BTD,DC->BTC", x_BTD, qkv_DC)
    b, t = x_BTD.shape[:2]
    q_BTNH = qkv_BTC[..., :n * h].reshape(b, t, n, h)
    k_BTKH = qkv_BTC[..., n * h:(n + k) * h].reshape(b, t, k, h)
    v_BTKH = qkv_BTC[..., (n + k) * h:].reshape(b, t, k, h)
    assert not self.cfg.attention_bias, "the bench's fused projection leaves biases out"
    return q_BTNH, k_BTKH, v_BTKH


@jax.custom_vjp
def swiglu(gate_BTF, up_BTF):
    return jax.nn.silu(gate_BTF) * up_BTF


def _swiglu_fwd(gate_BTF, up_BTF):
    return swiglu(gate_BTF, up_BTF), (gate_BTF, up_BTF)


def _swiglu_bwd(residuals, d_h_BTF):
    gate, up = (r.astype(jnp.float32) for r in residuals)
    d_h = d_h_BTF.astype(jnp.float32)
    sig = jax.nn.sigmoid(gate)
    d_gate = d_h * up * sig * (1 + gate * (1 - sig))
    d_up = d_h * gate * sig
    return d_gate.astype(residuals[0].dtype), d_up.astype(residuals[1].dtype)


swiglu.defvjp(_swiglu_fwd, _swiglu_bwd)


def mlp_swiglu_vjp(self, x_BTD):
    dt = x_BTD.dtype
    gate_BTF = jnp.einsum("BTD,DF->BTF", x_BTD, self.gate_DF[...].astype(dt))
    up_BTF = jnp.einsum("BTD,DF->BTF", x_BTD, self.up_DF[...].astype(dt))
    h_BTF = sharding.constrain(swiglu(gate_BTF, up_BTF), ("batch", "seq", "act_mlp"))
    return jnp.einsum("BTF,FD->BTD", h_BTF, self.down_FD[...].astype(dt))


PATCHES = {"qkv_fused": [(transformer.Attention, "_project_qkv", project_qkv_fused)],
           "swiglu_vjp": [(transformer.MLP, "__call__", mlp_swiglu_vjp)]}
PATCHES["both"] = PATCHES["qkv_fused"] + PATCHES["swiglu_vjp"]
PATCHES["base"] = []


@contextlib.contextmanager
def patched(variant):
    saved = [(cls, name, getattr(cls, name)) for cls, name, _ in PATCHES[variant]]
    for cls, name, fn in PATCHES[variant]:
        setattr(cls, name, fn)
    try:
        yield
    finally:
        for cls, name, fn in saved:
            setattr(cls, name, fn)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--config", default="configs/0p5b_16b.py")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--seq_len", type=int, default=1024)
    p.add_argument("--steps", type=int, default=15)
    p.add_argument("--variants", default="base,qkv_fused,swiglu_vjp,both,base")
    args = p.parse_args()
    config = load_module(args.config).get_config()
    config.train.global_batch_size = args.batch
    config.data.seq_len = args.seq_len
    variants = args.variants.split(",")
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "launch"))
    from benchmark import benchmark  # launch/benchmark.py's absl flags are defined on import: here, not in a test

    first_loss = None
    for variant in variants:
        with patched(variant):
            r = benchmark(config, args.steps, 3, "rope")
        print(f"{variant:12s} step {r['step_time_s'] * 1e3:6.1f} ms (min {r['step_time_min_s'] * 1e3:.1f}, max "
              f"{r['step_time_max_s'] * 1e3:.1f}) | {r['tokens_per_sec']:,.0f} tokens/s | peak memory "
              f"{r['peak_memory_gib']:.1f} GiB | loss after {args.steps + 3} steps {r['final_loss']:.4f}", flush=True)
        print("RESULT " + json.dumps({"variant": variant, **r}), flush=True)
        if first_loss is None:
            first_loss = r["final_loss"]
        if abs(r["final_loss"] / first_loss - 1) > 2e-3:
            sys.exit(f"error: {variant}'s loss {r['final_loss']} differs from {variants[0]}'s {first_loss}")


if __name__ == "__main__":
    main()
