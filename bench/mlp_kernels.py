"""drope_jax/model/mlp_kernels.py's SwiGLU backward alone on the Table 4 step's activations, across its launch
parameters, beside XLA's (autodiff of silu(gate) * up).

  cd bench && python mlp_kernels.py [--batch=32] [--seq_len=1024] [--mlp_dim=4864]

Random bf16 gate, up and incoming gradient [batch x seq_len, mlp_dim] (319 MB each at the defaults); each
variant's median time and its rate over the bytes it must move (three reads, two writes), checked against
XLA's result first. The fastest is printed last, as a line of JSON; mlp_kernels.py's defaults are the fastest of
one H200's sweep.
"""

import argparse
import itertools
import json

import jax
import jax.numpy as jnp

from drope_jax.model import mlp_kernels

from timing import timed_row

BLOCKS = (2048, 4096, 8192, 16384)
WARPS = (4, 8, 16)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--seq_len", type=int, default=1024)
    p.add_argument("--mlp_dim", type=int, default=4864)
    args = p.parse_args()
    shape = (args.batch * args.seq_len, args.mlp_dim)
    d_h, gate, up = (jax.random.normal(k, shape, jnp.float32).astype(jnp.bfloat16)
                     for k in jax.random.split(jax.random.key(0), 3))
    size = gate.size * gate.dtype.itemsize
    print(f"{jax.devices()[0].device_kind} | gate, up and gradient {shape[0]} x {shape[1]} bf16, {size / 1e9:.2f} GB "
          "each", flush=True)
    xla = jax.jit(lambda d, g, u: jax.vjp(lambda g, u: jax.nn.silu(g) * u, g, u)[1](d))
    want = xla(d_h, gate, up)
    rows = []
    timed_row("XLA (autodiff)", xla, (d_h, gate, up), 5 * size, want, rows)
    for block, warps in itertools.product(BLOCKS, WARPS):
        fn = jax.jit(lambda d, g, u, b=block, w=warps: mlp_kernels.swiglu_backward(d, g, u, b, w))
        timed_row(f"pallas, block {block}, {warps} warps", fn, (d_h, gate, up), 5 * size, want, rows)
    print("BEST " + json.dumps(min(rows)))


if __name__ == "__main__":
    main()
