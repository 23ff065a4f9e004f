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


def _lse_kernel(x_ref, lse_ref, *, block: int):
    """One row: x_ref [V], lse_ref []."""
    vocab = x_ref.shape[0]

    def step(i, carry):
        top, total = carry
        index = i * block + jnp.arange(block)
        x = plt.load(x_ref.at[index], mask=index < vocab, other=-jnp.inf).astype(jnp.float32)
        new_top = jnp.maximum(top, jnp.max(x))
        return new_top, total * jnp.exp(top - new_top) + jnp.sum(jnp.exp(x - new_top))

    top, total = jax.lax.fori_loop(0, pl.cdiv(vocab, block), step, (jnp.float32(-jnp.inf), jnp.float32(0)))
    lse_ref[...] = top + jnp.log(total)


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


def nll_backward(residuals, d_nll_BT, block: int = GRAD_BLOCK, num_warps: int = GRAD_WARPS):
    """loss.nll_backward in one read and one write of the logits."""
    logits_BTV, targets_BT, lse_BT = residuals
    logits_NV = logits_BTV.reshape(-1, logits_BTV.shape[-1])
    row = jax.ShapeDtypeStruct(logits_NV.shape[-1:], logits_NV.dtype)
    grad_NV = _per_row(_grad_kernel, row, block, num_warps)(logits_NV, lse_BT.reshape(-1), targets_BT.reshape(-1),
                                                 d_nll_BT.reshape(-1).astype(jnp.float32))
    return grad_NV.reshape(logits_BTV.shape), None
