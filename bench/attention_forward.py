"""The causal attention's forward alone at the Table 4 step's shape: cuDNN (what the library runs on a GPU) against
JAX's Mosaic GPU kernel for Hopper (jax.experimental.pallas.ops.gpu.attention_mgpu), across its launch parameters.

  python bench/attention_forward.py [--batch=32] [--seq_len=1024] [--heads=14] [--kv_heads=2] [--head_dim=64]

cuDNN's forward takes 5.4 to 5.8 ms of the step (24 layers, 249 TFLOP/s; docs/performance.md). The Mosaic kernel
has a causal forward but no causal backward, so it could only replace the forward, with cuDNN's backward fed its
output and log-sum-exp. This measures whether that is worth building: each row is one layer's forward, the median
of 10 calls after 3, with its rate over the causal FLOPs and its largest difference from cuDNN's output.
"""

import argparse
import itertools

import jax
import jax.numpy as jnp

from timing import median_ms


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--seq_len", type=int, default=1024)
    p.add_argument("--heads", type=int, default=14)
    p.add_argument("--kv_heads", type=int, default=2)
    p.add_argument("--head_dim", type=int, default=64)
    args = p.parse_args()
    b, t, n, k, h = args.batch, args.seq_len, args.heads, args.kv_heads, args.head_dim
    keys = jax.random.split(jax.random.key(0), 3)
    q = jax.random.normal(keys[0], (b, t, n, h), jnp.bfloat16)
    key, value = (jax.random.normal(kk, (b, t, k, h), jnp.bfloat16) for kk in keys[1:])
    flops = 4 * b * t * t * n * h / 2  # causal: half the scores
    print(f"{jax.devices()[0].device_kind} | q [{b}, {t}, {n}, {h}], k and v [{b}, {t}, {k}, {h}] bf16, causal",
          flush=True)

    cudnn = jax.jit(lambda q, k, v: jax.nn.dot_product_attention(q, k, v, is_causal=True, implementation="cudnn"))
    want = cudnn(q, key, value)

    def row(name, fn):
        try:
            error = float(jnp.max(jnp.abs(fn(q, key, value).astype(jnp.float32) - want.astype(jnp.float32))))
            ms = median_ms(fn, q, key, value)
        except Exception as e:  # noqa: BLE001 - a launch this kernel refuses costs its row
            print(f"  {name:48s} failed: {str(e).splitlines()[0][:200]}", flush=True)
            return
        print(f"  {name:48s} {ms:6.3f} ms  {flops / ms / 1e9:5.0f} TFLOP/s  max |diff| {error:.3g}", flush=True)

    row("cuDNN (jax.nn.dot_product_attention)", cudnn)
    from jax.experimental.pallas.ops.gpu import attention_mgpu
    for block_q, block_kv, steps in itertools.product((64, 128), (64, 128), (2, 4)):
        config = attention_mgpu.TuningConfig(block_q=block_q, block_kv=block_kv, max_concurrent_steps=steps,
                                             causal=True)
        # Its shared-memory buffers are float16 in this JAX: the inputs go in as float16, the output comes back bf16
        fn = jax.jit(lambda q, k, v, c=config: attention_mgpu.attention(
            *(a.astype(jnp.float16) for a in (q * jnp.bfloat16(h ** -0.5), k, v)), c).astype(q.dtype))
        row(f"Mosaic GPU (float16), block_q {block_q}, block_kv {block_kv}, {steps} stages", fn)


if __name__ == "__main__":
    main()
