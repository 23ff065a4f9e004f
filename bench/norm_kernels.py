"""drope_jax/model/norm_kernels.py's residual add + RMSNorm alone on the Table 4 step's activations, forward and
backward, across the kernels' launch parameters, beside XLA's (the same op, and autodiff of it).

  cd bench && python norm_kernels.py [--batch=32] [--seq_len=1024] [--d_model=896] [--copies=3]

Random bf16 arrays [batch, seq_len, d_model] (59 MB each at the defaults). The forward reads x and delta and
writes s and n; the backward reads s, the residual gradient and ``copies`` input gradients (the attention's norm
has 3, the MLP's 2) and writes d x. Each variant's median time and its rate over those bytes, checked against
XLA's results first. Each pass's fastest is printed last, as a line of JSON.
"""

import argparse
import functools
import itertools
import json

import jax
import jax.numpy as jnp

from drope_jax.model import norm_kernels

from timing import timed_row

ROWS = (1, 2, 4, 8, 16)
WARPS = (2, 4, 8, 16)
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

    @jax.jit
    def xla_forward(x, delta, weight):
        s, (n,) = norm_kernels._xla_add_norm(x, delta, weight, EPS, 1)
        return s, n

    print("forward (x, delta -> s, n):", flush=True)
    want = xla_forward(s, d_s, weight)
    results = []
    timed_row("XLA", xla_forward, (s, d_s, weight), 4 * size, want, results)
    for rows, warps in itertools.product(ROWS, WARPS):
        kernel = jax.jit(functools.partial(norm_kernels.add_norm_forward, eps=EPS, rows=rows, num_warps=warps))
        timed_row(f"pallas, {rows} rows, {warps} warps", kernel, (s, d_s, weight), 4 * size, want, results)
    print("BEST forward " + json.dumps(min(results)), flush=True)

    print(f"backward ({args.copies} input gradients -> d x, d weight):", flush=True)
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
    print("BEST backward " + json.dumps(min(results)))

if __name__ == "__main__":
    main()
