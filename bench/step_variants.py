"""The whole train step with the transformer's body written other ways, interleaved in one process on one GPU.

  python bench/step_variants.py [--variants=base,qkv_fused,xla:xla_gpu_triton_gemm_any] [--peer] [--rounds=6] \
      [--steps=10] [--timing=each|back_to_back|both] [--profile_dir=DIR] [--config=configs/0p5b_16b.py] \
      [--batch=32] [--seq_len=1024]

A step's median drifts by 3 to 4 ms between runs on one H200 even within a process (docs/performance.md), as
much as a rewrite saves. So every variant is compiled first, then timed in rounds: each round runs every
variant (and with --peer, the PyTorch peer of bench/hf_peer.py in the same process) for --steps steps, so
drift hits all of them alike. The report gives each one's median over all its timed steps, its median per
round, and the peer's step over each variant's, per round (the median of those ratios is the figure to quote).
One train state threads through all variants: each computes the same function, so it trains on.
Before timing, each variant takes one step from the same initial state: its loss and gradient norm must
equal the first variant's (to 1e-3 relative), or the bench stops.
With --profile_dir, each variant then traces 3 steps into DIR/<variant> (bench/profile_summary.py reads them).

Variants (each replaces one function of the model or step while it is traced; parameters and checkpoints
unchanged):
- `base`: the model as it is;
- `qkv_fused`: one matrix product with the query, key and value weights concatenated on the fly
  ([896, 1152]), its output split, so the backward's input gradient is one product too, and the norm before it
  hands out one copy, not three (norm_kernels.py's backward then reads one input gradient). The library does this
  wherever the norm's kernel runs (transformer.Attention.fused_qkv) since 2026-12-05, so on one GPU it is `base`;
  `qkv_separate`: the three products apart, the library before;
- `swiglu_vjp`: silu(gate) * up with a hand-written backward (one pass over gate, up and the incoming
  gradient, writing both gradients) instead of autodiff's;
- `gate_up_fused`: the gate and up projections as one product ([896, 2, 4864], stacked on the fly), reading one
  copy of the norm;
- `select_skip`: the skipped update of a non-finite step as a select (`jnp.where` over the update and the optimizer
  state) instead of train/step.py's `lax.cond`, whose predicate goes to the host, which waits for it;
- `xla_norm`: config.model.norm_backend="xla" (the residual add + RMSNorm by XLA and autodiff, without
  norm_kernels.py's kernels);
- `xla_mlp`: config.model.mlp_backend="xla" (the SwiGLU's backward by autodiff, without mlp_kernels.py's kernel);
- `xla_kernels`: those two and config.model.loss_backend="xla" (no Pallas kernel at all);
- `norm_forward_kernel`: norm_kernels.py's forward kernel as well as its backward (norm_kernels.FORWARD_KERNEL;
  the library's default since 2026-12-05, so now the same as `base`); `norm_xla_forward`: XLA's forward with the
  backward kernel, the library before;
- `mlp_forward_kernel`: mlp_kernels.py's forward kernel for silu(gate) * up as well as its backward
  (mlp_kernels.FORWARD_KERNEL);
- `norm_launch_8`: norm_kernels.py's kernels at their first launch, 8 rows a program, 8 at a time, 16 warps,
  instead of the library's 4, 4 and 4; `norm_launch_8_separate`: that and `qkv_separate`, the library before both;
- `xla:NAME[=VALUE]+NAME...`: the model as it is, compiled with these XLA options (a bare NAME is set to true; a
  list value's items are separated by |), for example `xla:xla_gpu_triton_gemm_any`. A variant that does not
  compile is reported and left out.
tests/test_step_variants_bench.py checks the rewrites against the model on CPU.
"""

import os
import sys

if "--peer" in sys.argv:  # JAX's pool takes 46% of the GPU (its step peaks at 55 GiB of 140), the peer the rest
    os.environ.setdefault("XLA_PYTHON_CLIENT_MEM_FRACTION", "0.46")
    os.environ.setdefault("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")

import argparse
import contextlib
import copy
import functools
import itertools
import json
import pathlib
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from drope_jax import sharding
from drope_jax.model import mlp_kernels, norm_kernels, transformer
from drope_jax.run_config import load_module
from drope_jax.train import step as train_step
from drope_jax.train.setup import make_setup


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
    x_gate_BTD, x_up_BTD = transformer.per_product(x_BTD, 2)
    dt = x_gate_BTD.dtype
    gate_BTF = jnp.einsum("BTD,DF->BTF", x_gate_BTD, self.gate_DF[...].astype(dt))
    up_BTF = jnp.einsum("BTD,DF->BTF", x_up_BTD, self.up_DF[...].astype(dt))
    h_BTF = sharding.constrain(swiglu(gate_BTF, up_BTF), ("batch", "seq", "act_mlp"))
    return jnp.einsum("BTF,FD->BTD", h_BTF, self.down_FD[...].astype(dt))


def mlp_gate_up_fused(self, x_BTD):
    (x_BTD,) = transformer.per_product(x_BTD, 1)
    dt = x_BTD.dtype
    gate_up_DCF = jnp.stack([self.gate_DF[...], self.up_DF[...]], axis=1).astype(dt)
    gate_up_BTCF = jnp.einsum("BTD,DCF->BTCF", x_BTD, gate_up_DCF)
    h_BTF = sharding.constrain(jax.nn.silu(gate_up_BTCF[:, :, 0]) * gate_up_BTCF[:, :, 1], ("batch", "seq", "act_mlp"))
    return jnp.einsum("BTF,FD->BTD", h_BTF, self.down_FD[...].astype(dt))


def update_if_finite_select(tx, grads, opt_state, params, finite):
    updates, new_opt_state = tx.update(grads, opt_state, params)
    updates = jax.tree.map(lambda u: jnp.where(finite, u, jnp.zeros_like(u)), updates)
    return updates, jax.tree.map(lambda new, old: jnp.where(finite, new, old), new_opt_state, opt_state)


PATCHES = {"qkv_fused": [(transformer.Attention, "fused_qkv", True)],
           "qkv_separate": [(transformer.Attention, "fused_qkv", False)],
           "swiglu_vjp": [(transformer.MLP, "__call__", mlp_swiglu_vjp)],
           "gate_up_fused": [(transformer.MLP, "__call__", mlp_gate_up_fused), (transformer.MLP, "input_copies", 1)],
           "select_skip": [(train_step, "update_if_finite", update_if_finite_select)],
           "norm_forward_kernel": [(norm_kernels, "FORWARD_KERNEL", True)],
           "norm_xla_forward": [(norm_kernels, "FORWARD_KERNEL", False)],
           "mlp_forward_kernel": [(mlp_kernels, "FORWARD_KERNEL", True)]}
PATCHES["norm_launch_8"] = [
    (norm_kernels, name, functools.partial(getattr(norm_kernels, name), rows=8, chunk=8, num_warps=16))
    for name in ("add_norm_forward", "add_norm_backward")]
PATCHES["norm_launch_8_separate"] = PATCHES["norm_launch_8"] + PATCHES["qkv_separate"]
PATCHES["base"] = []
# Variants that change a config setting instead of a method.
CONFIG_VARIANTS = {"xla_norm": {"norm_backend": "xla"}, "xla_mlp": {"mlp_backend": "xla"},
                   "xla_kernels": {"norm_backend": "xla", "mlp_backend": "xla", "loss_backend": "xla"}}


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


def compiler_options(variant: str) -> dict:
    """XLA options of an `xla:NAME[=VALUE]+NAME...` variant (a bare NAME is set to true), else none. A list value
    separates its items with | (commas separate variants): xla_gpu_enable_command_buffer=FUSION|CUDNN."""
    if not variant.startswith("xla:"):
        return {}
    options = dict(o.replace("|", ",").split("=", 1) if "=" in o else (o, "true")
                   for o in variant[len("xla:"):].split("+"))
    typed = {"true": True, "false": False}
    return {k: typed.get(v, int(v) if v.lstrip("-").isdigit() else v) for k, v in options.items()}


def variant_setup(config, variant, mesh):
    variant_config = copy.deepcopy(config)
    variant_config.model.update(CONFIG_VARIANTS.get(variant, {}))
    return make_setup(variant_config, mesh)


def compile_variants(setups, state, batch):
    compiled = {}
    for variant, setup in setups.items():
        with patched(variant if variant in PATCHES else "base"):
            lowered = setup.phase_step("rope").lower(state, batch)
        try:
            compiled[variant] = lowered.compile(compiler_options(variant) or None)
        except Exception as e:  # an XLA option this XLA lacks or cannot compile with: report it, time the rest
            print(f"{variant}: does not compile ({type(e).__name__}: {str(e)[:300]})", flush=True)
    return compiled


def check_variants(compiled, setup, batch):
    """One step of each variant from the same initial state: the same loss and gradient norm."""
    first = None
    for variant, step in compiled.items():
        _, m = step(setup.fresh_state(), batch)
        got = (float(m["loss"]), float(m["grad_norm"]))
        print(f"{variant:14s} first step: loss {got[0]:.6f}, gradient norm {got[1]:.6f}", flush=True)
        first = first or got
        if any(abs(g / f - 1) > 1e-3 for g, f in zip(got, first)):
            sys.exit(f"error: {variant}'s first step (loss, gradient norm) {got} differs from "
                     f"{next(iter(compiled))}'s {first}")


def timed_steps(launch, wait, n, back_to_back=False):
    """Seconds per step of n steps: each launched and waited for in turn, or (back_to_back) all n launched and
    waited for once, as a training loop runs them (n copies of the mean)."""
    if back_to_back:
        start = time.perf_counter()
        for _ in range(n):
            launch()
        wait()
        return [(time.perf_counter() - start) / n] * n
    times = []
    for _ in range(n):
        start = time.perf_counter()
        launch()
        wait()
        times.append(time.perf_counter() - start)
    return times


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--config", default="configs/0p5b_16b.py")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--seq_len", type=int, default=1024)
    p.add_argument("--variants", default="base,xla_mlp,xla_kernels")
    p.add_argument("--peer", action="store_true", help="interleave bench/hf_peer.py's step (shape 0p5b_16b)")
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument("--steps", type=int, default=10, help="timed steps of each variant per round")
    p.add_argument("--timing", choices=("each", "back_to_back", "both"), default="each",
                   help="each: every step waited for in turn; back_to_back: each round's steps launched back to back "
                        "and waited for once, as the training loop and a PyTorch loop run them; both: each round "
                        "times both ways (one compile for the two tables)")
    p.add_argument("--back_to_back", dest="timing", action="store_const", const="back_to_back",
                   help="--timing=back_to_back")
    p.add_argument("--profile_dir", default="")
    args = p.parse_args()
    config = load_module(args.config).get_config()
    config.train.global_batch_size = args.batch
    config.data.seq_len = args.seq_len
    variants = args.variants.split(",")
    if unknown := [v for v in variants if v not in PATCHES and v not in CONFIG_VARIANTS and not v.startswith("xla:")]:
        sys.exit(f"error: unknown variants {unknown}; choose from {sorted(PATCHES) + sorted(CONFIG_VARIANTS)}")

    mesh = sharding.make_mesh(**config.mesh)
    setups = {v: variant_setup(config, v, mesh) for v in variants}
    setup = setups[variants[0]]  # the initial state, the batches and the check's reference
    rng = np.random.default_rng(0)
    with jax.set_mesh(setup.mesh):
        batches = [{"tokens": sharding.host_batch_to_global(rng.integers(
            0, setup.plan.model.vocab_size, (args.batch, args.seq_len + 1), dtype=np.int32), setup.mesh)}
            for _ in range(2)]
        compiled = compile_variants(setups, setup.fresh_state(), batches[0])
        variants = list(compiled)
        check_variants(compiled, setup, batches[0])
        state = setup.fresh_state()

        count = itertools.count()  # steps alternate between the two batches

        def jax_launch(variant):
            nonlocal state
            state, _ = compiled[variant](state, batches[next(count) % 2])

        def jax_wait():
            jax.block_until_ready(state)

        runners = {v: (functools.partial(jax_launch, v), jax_wait) for v in variants}
        for launch, wait in runners.values():
            launch()  # warm-up: first-call allocation
            wait()
        if args.peer:
            sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
            import hf_peer
            import torch

            peer_step, peer_batches, _ = hf_peer.build("0p5b_16b", args.seq_len, args.batch)

            def peer_launch():
                peer_step(peer_batches[next(count) % 2])

            runners["peer"] = (peer_launch, torch.cuda.synchronize)
            timed_steps(*runners["peer"], 5)  # warm-up: torch.compile

        timings = ("each", "back_to_back") if args.timing == "both" else (args.timing,)
        times = {(timing, name): [] for timing in timings for name in runners}
        for r in range(args.rounds):
            for timing in timings:
                for name, (launch, wait) in runners.items():
                    times[timing, name].append(timed_steps(launch, wait, args.steps, timing == "back_to_back"))
            print(f"round {r + 1}/{args.rounds}: " + ", ".join(
                f"{n}{' (back to back)' if t == 'back_to_back' else ''} {statistics.median(ts[-1]) * 1e3:.1f} ms"
                for (t, n), ts in times.items()), flush=True)

        if args.profile_dir:
            for v in variants:
                with jax.profiler.trace(os.path.join(args.profile_dir, v)):
                    for _ in range(3):
                        jax_launch(v)
                    jax_wait()
        peak_gib = max((d.memory_stats() or {}).get("peak_bytes_in_use", 0) for d in jax.local_devices()) / 2**30

    tokens = args.batch * args.seq_len
    print(f"\n{jax.devices()[0].device_kind} | seq {args.seq_len} x batch {args.batch} | {args.rounds} rounds of "
          f"{args.steps} steps each | JAX peak memory {peak_gib:.1f} GiB")
    for timing in timings:
        print("launched back to back, one wait a round:" if timing == "back_to_back" else "each step waited for:")
        for name in runners:
            rounds = times[timing, name]
            all_ms = [t * 1e3 for rnd in rounds for t in rnd]
            per_round = [statistics.median(rnd) * 1e3 for rnd in rounds]
            line = (f"{name:20s} step {statistics.median(all_ms):6.1f} ms (rounds {min(per_round):.1f} to "
                    f"{max(per_round):.1f}) | {tokens / statistics.median(all_ms) * 1e3:,.0f} tokens/s")
            result = {"name": name, "timing": timing, "step_ms": statistics.median(all_ms), "round_ms": per_round}
            if "peer" in runners and name != "peer":
                peer_rounds = (statistics.median(rnd) * 1e3 for rnd in times[timing, "peer"])
                ratios = [pr / vr for pr, vr in zip(peer_rounds, per_round)]
                line += (f" | peer / this: {statistics.median(ratios):.3f}x (rounds {min(ratios):.3f} to "
                         f"{max(ratios):.3f})")
                result["peer_ratio_per_round"] = ratios
            print(line)
            print("RESULT " + json.dumps(result), flush=True)

if __name__ == "__main__":
    main()
