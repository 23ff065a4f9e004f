"""drope_jax/model/loss_kernels.py's two kernels alone on the Table 4 step's logits, across their launch parameters.

  python bench/loss_kernels.py [--kernels=lse,backward,fused] [--batch=32] [--seq_len=1024] [--vocab=151936]

Random bf16 logits [batch x seq_len, vocab] (10 GB at the defaults); each kernel's median time, its rate
over the bytes it must move (the log-sum-exp reads the logits once; the backward reads them once and writes
their gradient once; `lse_and_grad`, both at once, as much as the backward), and XLA's passes
(drope_jax/model/loss.py) beside them. `lse_and_grad` is also timed against the two kernels it replaces, run one
after the other. Every variant's result is
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
# lse_and_grad's launches: (block, warps, programs); programs 0 is one program a row
FUSED_LAUNCHES = [(4096, 4, 0), (8192, 16, 0)] + list(itertools.product((4096, 8192), (8, 16, 32), (128, 256, 512)))


def main():
    args = parse_head_shape(__doc__, kernels="lse,backward,fused")
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
    fused_args, fused_rows = (logits_NV, targets_N), []
    want_fused = (lse_N, backward(loss.nll_backward)(logits_NV, targets_N, lse_N, jnp.ones((n,), jnp.float32)))
    if "fused" in args.kernels:
        def two_kernels(x, t):
            lse = loss_kernels.log_sum_exp(x)
            return lse, loss_kernels.nll_backward((x, t, lse), jnp.ones(t.shape, jnp.float32))[0]
        timed_row("the two kernels in turn (log-sum-exp, backward)", jax.jit(two_kernels), fused_args, 2 * size,
                  want_fused, [])
    for block, warps, programs in FUSED_LAUNCHES if "fused" in args.kernels else ():
        fn = jax.jit(lambda x, t, b=block, w=warps, p=programs: loss_kernels.lse_and_grad(x, t, b, w, p))
        timed_row(f"pallas lse_and_grad, block {block}, {warps} warps, {programs or 'a row a'} programs", fn,
                  fused_args, 2 * size, want_fused, fused_rows)
    print("BEST " + json.dumps({"log_sum_exp": min(lse_rows, default=None), "backward": min(grad_rows, default=None),
                                "lse_and_grad": min(fused_rows, default=None)}))


if __name__ == "__main__":
    main()
