"""drope_jax/model/norm_kernels.py's residual add + RMSNorm backward alone on the Table 4 step's activations,
across its launch parameters, beside XLA's (autodiff of the same op).

  cd bench && python norm_kernels.py [--batch=32] [--seq_len=1024] [--d_model=896] [--copies=3]

Random bf16 s, residual gradient and ``copies`` input gradients [batch, seq_len, d_model] (59 MB each at the
defaults: the attention's norm has 3 copies, the MLP's 2); each variant's median time and its rate over the bytes
it must move (one read of each, one write of d x), checked against XLA's d x and d weight first. The fastest is
printed last, as a line of JSON.
"""

import argparse
import itertools
import json

import jax
import jax.numpy as jnp

from drope_jax.model import norm_kernels

from timing import timed_row

ROWS = (1, 2, 4, 8, 16)
WARPS = (4, 8, 16)
EPS = 1e-6


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--seq_len", type=int, default=1024)
    p.add_argument("--d_model", type=int, default=896)
    p.add_argument("--copies", type=int, default=3)
    args = p.parse_args()
    shape = (args.batch, args.seq_len, args.d_model)
    keys = jax.random.split(jax.random.key(0), 3 + args.copies)
    s, d_s, *d_ns = (jax.random.normal(k, shape, jnp.float32).astype(jnp.bfloat16) for k in keys[:-1])
    weight = 1 + jax.random.normal(keys[-1], shape[-1:], jnp.float32) / 4
    size = s.size * s.dtype.itemsize
    print(f"{jax.devices()[0].device_kind} | s, d s and {args.copies} input gradients {shape} bf16, "
          f"{size / 1e6:.1f} MB each", flush=True)

    @jax.jit
    def xla(s, d_s, weight, *d_ns):  # s = s + 0: the add's backward is the identity, as in the model
        _, vjp = jax.vjp(lambda x, w: norm_kernels.add_norm(x, jnp.zeros_like(x), w, EPS, args.copies, "xla"),
                         s, weight)
        d_x, d_weight = vjp((d_s, tuple(d_ns)))
        return d_x, d_weight

    want = xla(s, d_s, weight, *d_ns)
    inputs = (s, d_s, weight, *d_ns)
    moved = (3 + args.copies) * size
    results = []
    timed_row("XLA (autodiff)", xla, inputs, moved, want, results)
    for rows, warps in itertools.product(ROWS, WARPS):
        @jax.jit
        def kernel(s, d_s, weight, *d_ns, rows=rows, warps=warps):
            d_x, d_weight_rows = norm_kernels.add_norm_backward(s, d_s, weight, d_ns, EPS, rows, warps)
            return d_x, jnp.sum(d_weight_rows, axis=(0, 1))[:weight.shape[0]]
        timed_row(f"pallas, {rows} rows, {warps} warps", kernel, inputs, moved, want, results)
    print("BEST " + json.dumps(min(results)))


if __name__ == "__main__":
    main()
