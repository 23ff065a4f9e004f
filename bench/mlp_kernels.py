"""drope_jax/model/mlp_kernels.py's SwiGLU kernels alone on the Table 4 step's activations, across their launch
parameters, beside XLA's (silu(gate) * up, and autodiff of it).

  cd bench && python mlp_kernels.py [--passes=forward,backward] [--batch=32] [--seq_len=1024] [--mlp_dim=4864]

Random bf16 gate, up and incoming gradient [batch x seq_len, mlp_dim] (319 MB each at the defaults). The forward
reads gate and up and writes their product; the backward reads the three and writes d gate and d up. Each
variant's median time and its rate over the bytes it must move, checked against XLA's result first. Each pass's
fastest is printed last, as a line of JSON; mlp_kernels.py's defaults are the fastest of one H200's sweep of the
backward.
"""

import argparse
import functools
import itertools

import jax
import jax.numpy as jnp

from drope_jax.model import mlp_kernels

from timing import sweep

BLOCKS = (2048, 4096, 8192, 16384)
WARPS = (4, 8, 16)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--passes", default="forward,backward")
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
    passes = {"forward": (jax.jit(lambda g, u: jax.nn.silu(g) * u), mlp_kernels.swiglu_forward, (gate, up), 3),
              "backward": (jax.jit(lambda d, g, u: jax.vjp(lambda g, u: jax.nn.silu(g) * u, g, u)[1](d)),
                           mlp_kernels.swiglu_backward, (d_h, gate, up), 5)}
    for name in args.passes.split(","):
        xla, kernel, inputs, arrays_moved = passes[name]
        kernels = {f"pallas, block {block}, {warps} warps": jax.jit(functools.partial(kernel, block=block,
                                                                                      num_warps=warps))
                   for block, warps in itertools.product(BLOCKS, WARPS)}
        sweep(name, xla, kernels, inputs, arrays_moved * size)

if __name__ == "__main__":
    main()
