"""Causal self-attention alone, XLA against the fused kernel, at a 0.5B model's head shape.

  python bench/attention.py [--lengths=1024,8192] [--tokens=32768] [--backends=xla,cudnn] [--alibi]

For each length T the batch is tokens / T sequences of 16 heads x 64 (bf16; configs/0p5b_16b_wsd.py's heads,
those of docs/performance.md; configs/0p5b_16b.py has 14 query heads: --heads=14), so every length does
the same number of query tokens. Times ``drope_jax.model.attention.causal_attention`` forward, and forward
plus backward, each the median of 20 calls after 3 warm-up calls; each backend after the first also prints
how far its output and gradients are from the first backend's (max |a - b| / max |b|). With ``--alibi``
every call carries ALiBi's bias.
"""

import argparse

import jax
import jax.numpy as jnp

from drope_jax.model.attention import causal_attention
from drope_jax.model.positions import alibi_slopes

from timing import median_ms


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--lengths", default="1024,8192")
    p.add_argument("--tokens", type=int, default=32768, help="batch x length, the same at every length")
    p.add_argument("--backends", default="xla,cudnn")
    p.add_argument("--heads", type=int, default=16)
    p.add_argument("--head_dim", type=int, default=64)
    p.add_argument("--alibi", action="store_true", help="with ALiBi's bias, and the backends' differences")
    args = p.parse_args()
    slopes_N = alibi_slopes(args.heads) if args.alibi else None
    for length in map(int, args.lengths.split(",")):
        batch = max(1, args.tokens // length)
        kq, kk, kv = jax.random.split(jax.random.key(0), 3)
        shape = (batch, length, args.heads, args.head_dim)
        q, k, v = (jax.random.normal(key, shape, jnp.bfloat16) for key in (kq, kk, kv))
        reference = None
        for backend in args.backends.split(","):
            def forward(q, k, v, backend=backend):
                return causal_attention(q, k, v, implementation=backend, alibi_slopes_N=slopes_N)

            def forward_backward(q, k, v, forward=forward):
                return jax.grad(lambda *qkv: jnp.sum(forward(*qkv).astype(jnp.float32)), argnums=(0, 1, 2))(q, k, v)

            programs = [jax.jit(forward), jax.jit(forward_backward)]
            timings = []
            for program in programs:
                try:
                    timings.append(f"{median_ms(program, q, k, v, calls=20):8.2f} ms")
                except jax.errors.JaxRuntimeError as e:  # XLA's T x T scores can exceed the device memory
                    timings.append(f"failed ({str(e).splitlines()[0][:60]})")
            difference = ""
            if not any("failed" in t for t in timings):
                results = [programs[0](q, k, v), *programs[1](q, k, v)]
                if reference is None:
                    reference = results
                else:
                    difference = " | differences from the first (out, dq, dk, dv): " + ", ".join(
                        f"{relative_difference(a, b):.1e}" for a, b in zip(results, reference))
            print(f"{jax.devices()[0].device_kind} | T {length:,} x batch {batch} | {backend:5s} | "
                  f"forward {timings[0]} | forward+backward {timings[1]}{difference}", flush=True)


def relative_difference(a, b) -> float:
    a, b = a.astype(jnp.float32), b.astype(jnp.float32)
    return float(jnp.max(jnp.abs(a - b)) / jnp.max(jnp.abs(b)))


if __name__ == "__main__":
    main()
