"""drope_jax/model/loss_kernels.py's two kernels alone on the Table 4 step's logits, across their launch parameters.

  python bench/loss_kernels.py [--kernels=lse,backward] [--batch=32] [--seq_len=1024] [--vocab=151936]

Random bf16 logits [batch x seq_len, vocab] (10 GB at the defaults); each kernel's median time, its rate
over the bytes it must move (the log-sum-exp reads the logits once; the backward reads them once and writes
their gradient once), and XLA's passes (drope_jax/model/loss.py) beside them. Every variant's result is
checked against XLA's first; a variant that fails to compile or to match costs its row. The fastest of each
kernel is printed last, as a line of JSON; loss_kernels.py's defaults are the fastest of one H200's sweep.
"""

import itertools
import json

import jax
import jax.numpy as jnp
from head_shape import parse_head_shape

from drope_jax.model import loss, loss_kernels

from timing import timed_row

BLOCKS = (1024, 2048, 4096, 8192)
WARPS = (4, 8, 16)


def main():
    args = parse_head_shape(__doc__, kernels="lse,backward")
    n, v = args.batch * args.seq_len, args.vocab
    key_x, key_t = jax.random.split(jax.random.key(0))
    logits_NV = (4 * jax.random.normal(key_x, (n, v), jnp.float32)).astype(jnp.bfloat16)
    targets_N = jax.random.randint(key_t, (n,), 0, v, jnp.int32)
    d_nll_N = jnp.full((n,), 1.0 / n, jnp.float32)
    size = logits_NV.size * logits_NV.dtype.itemsize
    print(f"{jax.devices()[0].device_kind} | logits {n} x {v} bf16, {size / 1e9:.2f} GB", flush=True)

    xla_lse = jax.jit(lambda x: jax.nn.logsumexp(x.astype(jnp.float32), axis=-1))
    lse_N = xla_lse(logits_NV)
    want_lse = lse_N
    lse_rows = []
    timed_row("XLA log-sum-exp (loss.nll_and_lse's)", xla_lse, (logits_NV,), size, want_lse, lse_rows)
    for block, warps in itertools.product(BLOCKS, WARPS) if "lse" in args.kernels else ():
        fn = jax.jit(lambda x, b=block, w=warps: loss_kernels.log_sum_exp(x, b, w))
        timed_row(f"pallas log-sum-exp, block {block}, {warps} warps", fn, (logits_NV,), size, want_lse, lse_rows)

    def backward(fn):
        return jax.jit(lambda x, t, lse, d: fn((x, t, lse), d)[0])

    grad_args = (logits_NV, targets_N, lse_N, d_nll_N)
    want_grad = backward(loss.nll_backward)(*grad_args)
    grad_rows = []
    timed_row("XLA backward (loss.nll_backward)", backward(loss.nll_backward), grad_args, 2 * size, want_grad,
              grad_rows)
    for block, warps in itertools.product(BLOCKS, WARPS) if "backward" in args.kernels else ():
        fn = backward(lambda r, d, b=block, w=warps: loss_kernels.nll_backward(r, d, b, w))
        timed_row(f"pallas backward, block {block}, {warps} warps", fn, grad_args, 2 * size, want_grad, grad_rows)
    print("BEST " + json.dumps({"log_sum_exp": min(lse_rows), "backward": min(grad_rows)}))


if __name__ == "__main__":
    main()
