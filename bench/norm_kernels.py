"""drope_jax/model/norm_kernels.py's residual add + RMSNorm alone on the Table 4 step's activations, forward and
backward, across the kernels' launch parameters, beside XLA's (the same op, and autodiff of it).

  cd bench && python norm_kernels.py [--passes=forward,backward] [--copies=3] [--batch=32] [--seq_len=1024] \
      [--d_model=896]

Random bf16 arrays [batch, seq_len, d_model] (59 MB each at the defaults). The forward reads x and delta and
writes s and n; the backward reads s, the residual gradient and ``copies`` input gradients (the attention's norm
has 3, the MLP's 2) and writes d x, and d weight's rows (one a program), which XLA sums (in the timing). Each
launch (rows a program, rows it holds at a time, warps) gets its median time and its rate over the bytes that
must move, checked against XLA's results first. Each pass's fastest is printed last, as a line of JSON.
"""

import argparse
import functools

import jax
import jax.numpy as jnp

from drope_jax.model import norm_kernels

from timing import sweep

CHUNKS = (2, 4, 8, 16)  # rows a program holds at a time
PROGRAM_CHUNKS = (1, 4, 16)  # chunks a program takes in turn: fewer programs, fewer d weight rows to sum
WARPS = (4, 8, 16)
EPS = 1e-6


def launches():
    """(rows a program, rows at a time, warps) of every launch the sweep times."""
    return [(chunk * n, chunk, warps) for chunk in CHUNKS for n in PROGRAM_CHUNKS for warps in WARPS]


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--passes", default="forward,backward")
    p.add_argument("--copies", type=int, default=3)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--seq_len", type=int, default=1024)
    p.add_argument("--d_model", type=int, default=896)
    args = p.parse_args()
    shape = (args.batch, args.seq_len, args.d_model)
    keys = jax.random.split(jax.random.key(0), 3 + args.copies)
    s, d_s, *d_ns = (jax.random.normal(k, shape, jnp.float32).astype(jnp.bfloat16) for k in keys[:-1])
    weight = 1 + jax.random.normal(keys[-1], shape[-1:], jnp.float32) / 4
    size = s.size * s.dtype.itemsize
    print(f"{jax.devices()[0].device_kind} | [batch, seq, d] {shape} bf16, {size / 1e6:.1f} MB an array", flush=True)

    if "forward" in args.passes:
        @jax.jit
        def xla_forward(x, delta, weight):
            s, (n,) = norm_kernels._xla_add_norm(x, delta, weight, EPS, 1)
            return s, n

        kernels = {f"pallas, {rows} rows by {chunk}, {warps} warps": jax.jit(functools.partial(
            norm_kernels.add_norm_forward, eps=EPS, rows=rows, chunk=chunk, num_warps=warps))
            for rows, chunk, warps in launches()}
        sweep("forward", xla_forward, kernels, (s, d_s, weight), 4 * size)  # x, delta -> s, n

    if "backward" in args.passes:
        @jax.jit
        def xla_backward(s, d_s, weight, *d_ns):  # s = s + 0: the add's backward is the identity, as in the model
            _, vjp = jax.vjp(lambda x, w: norm_kernels.add_norm(x, jnp.zeros_like(x), w, EPS, args.copies, "xla"),
                             s, weight)
            return vjp((d_s, tuple(d_ns)))

        def backward(rows, chunk, warps):
            @jax.jit
            def kernel(s, d_s, weight, *d_ns):
                d_x, d_weight_rows = norm_kernels.add_norm_backward(s, d_s, weight, d_ns, EPS, rows, chunk, warps)
                return d_x, jnp.sum(d_weight_rows, axis=(0, 1))[:weight.shape[0]]
            return kernel

        kernels = {f"pallas, {r} rows by {c}, {w} warps": backward(r, c, w) for r, c, w in launches()}
        # s, d s and the input gradients -> d x, d weight
        # d weight, float32, sums 32,768 rows of products that XLA rounds to bf16 and the kernel does not: with
        # random signs the sum's relative error is a term's, bf16's (2e-3 measured on one H200)
        sweep(f"backward ({args.copies} input gradients)", xla_backward, kernels, (s, d_s, weight, *d_ns),
              (3 + args.copies) * size, f32_rtol=1e-2)

if __name__ == "__main__":
    main()
