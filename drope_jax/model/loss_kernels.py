"""The loss's two passes over the logits as Pallas (Triton) kernels for NVIDIA GPUs, one program per row.

drope_jax/model/loss.py runs them on a single GPU (``config.model.loss_backend``). Their XLA equivalents make three
passes over the [B, T, V] logits (a max, a sum of exponentials, then the backward's softmax - one_hot); in the
Table 4 step (10 GB of bf16 logits) those take 13.7 ms. Here:
- `nll_and_lse`: one read of each row. It keeps a running max and a sum of exponentials rescaled to it
  (online softmax), a block of the vocabulary at a time, and returns the same (NLL, log-sum-exp) in float32 as
  loss.nll_and_lse.
- `nll_backward`: one read and one write of each row, loss.nll_backward's formula in the logits' dtype.
On one H200 (2026-12-04, bench/loss_kernels.py, 32,768 x 151,936 bf16 logits) they take 3.1 and 5.4 ms against
XLA's 6.0 and 6.6 ms; the block sizes and warps below are that sweep's fastest.

Both take logits of any shape [..., V]; V need not be a power of two (the last block is masked). Off the GPU
they run in Pallas's interpreter: slow, but the same values (tests/test_loss_kernels.py).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plt

from drope_jax.sharding import target_platform

# (vocabulary entries a program reads at a time, a power of two as Triton needs; warps a program runs)
LSE_BLOCK, LSE_WARPS = 4096, 4
GRAD_BLOCK, GRAD_WARPS = 8192, 16
FUSED_BLOCK, FUSED_WARPS = 8192, 16


def _row_lse(x_ref, block: int):
    """The float32 log-sum-exp of one row x_ref [V], in one read: a running max and a sum of exponentials."""
    vocab = x_ref.shape[0]

    def step(i, carry):
        top, total = carry
        index = i * block + jnp.arange(block)
        x = plt.load(x_ref.at[index], mask=index < vocab, other=-jnp.inf).astype(jnp.float32)
        new_top = jnp.maximum(top, jnp.max(x))
        return new_top, total * jnp.exp(top - new_top) + jnp.sum(jnp.exp(x - new_top))

    top, total = jax.lax.fori_loop(0, pl.cdiv(vocab, block), step, (jnp.float32(-jnp.inf), jnp.float32(0)))
    return top + jnp.log(total)


def _lse_kernel(x_ref, lse_ref, *, block: int):
    """One row: x_ref [V], lse_ref []."""
    lse_ref[...] = _row_lse(x_ref, block)


def _grad_kernel(x_ref, lse_ref, target_ref, scale_ref, grad_ref, *, block: int):
    """One row: x_ref and grad_ref [V], the others []."""
    vocab = x_ref.shape[0]
    lse, target, scale = lse_ref[...], target_ref[...], scale_ref[...]

    @pl.loop(0, pl.cdiv(vocab, block))
    def _(i):
        index = i * block + jnp.arange(block)
        inside = index < vocab
        x = plt.load(x_ref.at[index], mask=inside, other=0).astype(jnp.float32)
        grad = (jnp.exp(x - lse) - (index == target).astype(jnp.float32)) * scale
        plt.store(grad_ref.at[index], grad.astype(grad_ref.dtype), mask=inside)


def _lse_and_grad_kernel(x_ref, target_ref, lse_ref, grad_ref, *, block: int):
    """One row: x_ref and grad_ref [V] (softmax - one_hot, unscaled), the others []. The second pass runs over the
    blocks last to first, so that the blocks the first pass read last are still in the L2 cache."""
    vocab = x_ref.shape[0]
    lse, target = _row_lse(x_ref, block), target_ref[...]
    lse_ref[...] = lse
    blocks = pl.cdiv(vocab, block)

    @pl.loop(0, blocks)
    def _(i):
        index = (blocks - 1 - i) * block + jnp.arange(block)
        inside = index < vocab
        x = plt.load(x_ref.at[index], mask=inside, other=0).astype(jnp.float32)
        grad = jnp.exp(x - lse) - (index == target).astype(jnp.float32)
        plt.store(grad_ref.at[index], grad.astype(grad_ref.dtype), mask=inside)


def _lse_and_grad_rows_kernel(x_ref, target_ref, lse_ref, grad_ref, *, block: int):
    """Rows one after another: x_ref and grad_ref [R, V], the others [R]. Fewer programs, so fewer rows in
    flight at once, so that more of a row is still in L2 when the second pass reads it again."""
    rows, vocab = x_ref.shape
    blocks = pl.cdiv(vocab, block)

    @pl.loop(0, rows)
    def _(r):
        def step(i, carry):
            top, total = carry
            index = i * block + jnp.arange(block)
            x = plt.load(x_ref.at[r, index], mask=index < vocab, other=-jnp.inf).astype(jnp.float32)
            new_top = jnp.maximum(top, jnp.max(x))
            return new_top, total * jnp.exp(top - new_top) + jnp.sum(jnp.exp(x - new_top))

        top, total = jax.lax.fori_loop(0, blocks, step, (jnp.float32(-jnp.inf), jnp.float32(0)))
        lse = top + jnp.log(total)
        plt.store(lse_ref.at[r], lse)
        target = plt.load(target_ref.at[r])

        @pl.loop(0, blocks)
        def _(i):
            index = (blocks - 1 - i) * block + jnp.arange(block)
            inside = index < vocab
            x = plt.load(x_ref.at[r, index], mask=inside, other=0).astype(jnp.float32)
            grad = jnp.exp(x - lse) - (index == target).astype(jnp.float32)
            plt.store(grad_ref.at[r, index], grad.astype(grad_ref.dtype), mask=inside)


def _per_row(kernel, out_shape, block: int, num_warps: int):
    """``kernel`` as a pallas_call on one row, mapped over the rows (vmap adds the grid), as JAX's own GPU
    layer norm does."""
    return jax.vmap(pl.pallas_call(functools.partial(kernel, block=block), out_shape=out_shape, grid=(),
                                   compiler_params=plt.CompilerParams(num_warps=num_warps),
                                   interpret=target_platform() != "gpu"))


def log_sum_exp(logits_NV, block: int = LSE_BLOCK, num_warps: int = LSE_WARPS):
    """[N] float32 log-sum-exp of each row of [N, V] logits, in one read."""
    return _per_row(_lse_kernel, jax.ShapeDtypeStruct((), jnp.float32), block, num_warps)(logits_NV)


def nll_and_lse(logits_BTV, targets_BT):
    """loss.nll_and_lse with the log-sum-exp in one read of the logits."""
    logits_NV = logits_BTV.reshape(-1, logits_BTV.shape[-1])
    lse_N = log_sum_exp(logits_NV)
    target_logit_N = jnp.take_along_axis(logits_NV, targets_BT.reshape(-1, 1), axis=-1)[:, 0].astype(jnp.float32)
    return (lse_N - target_logit_N).reshape(targets_BT.shape), lse_N.reshape(targets_BT.shape)


def lse_and_grad(logits_NV, targets_N, block: int = FUSED_BLOCK, num_warps: int = FUSED_WARPS, programs: int = 0):
    """([N] float32 log-sum-exp, [N, V] softmax - one_hot(target) in the logits' dtype) of [N, V] logits: the
    loss's forward and its gradient at once, in one read of the logits from memory (the second pass hits L2
    where it can) and one write."""
    if programs:
        n, v = logits_NV.shape
        out_shape = (jax.ShapeDtypeStruct((n // programs,), jnp.float32),
                     jax.ShapeDtypeStruct((n // programs, v), logits_NV.dtype))
        lse, grad = _per_row(_lse_and_grad_rows_kernel, out_shape, block, num_warps)(
            logits_NV.reshape(programs, -1, v), targets_N.reshape(programs, -1))
        return lse.reshape(n), grad.reshape(n, v)
    out_shape = (jax.ShapeDtypeStruct((), jnp.float32), jax.ShapeDtypeStruct(logits_NV.shape[-1:], logits_NV.dtype))
    return _per_row(_lse_and_grad_kernel, out_shape, block, num_warps)(logits_NV, targets_N)


def nll_backward(residuals, d_nll_BT, block: int = GRAD_BLOCK, num_warps: int = GRAD_WARPS):
    """loss.nll_backward in one read and one write of the logits."""
    logits_BTV, targets_BT, lse_BT = residuals
    logits_NV = logits_BTV.reshape(-1, logits_BTV.shape[-1])
    row = jax.ShapeDtypeStruct(logits_NV.shape[-1:], logits_NV.dtype)
    grad_NV = _per_row(_grad_kernel, row, block, num_warps)(logits_NV, lse_BT.reshape(-1), targets_BT.reshape(-1),
                                                 d_nll_BT.reshape(-1).astype(jnp.float32))
    return grad_NV.reshape(logits_BTV.shape), None
