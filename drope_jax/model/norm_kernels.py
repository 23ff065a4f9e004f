"""A residual add and the RMSNorm after it, whose backward is one Pallas (Triton) kernel on NVIDIA GPUs.

``add_norm(x, delta, weight, eps, copies, backend)`` returns ``(s, (n, ...))``: s = x + delta, the residual
stream going on, and ``copies`` references to n = rmsnorm(s) * weight, one for each matrix product that reads it
(query, key and value; or gate and up). The forward is XLA's either way, bit for bit the model's. The copies are
the point: each product hands back its own input gradient, so the backward receives them apart.

Left to autodiff, XLA computes the norm's backward in two passes over [B, T, D] arrays: one reads s and the
products' input gradients, writes their sum and reduces each row; the other reads the sum, s and the residual
stream's gradient and writes d x. In the Table 4 step that is 9 reads and writes of a bf16[32, 1024, 896] array
at the attention's norm and 8 at the MLP's, 7.4 ms a step (docs/performance.md, "The last 1%"). The kernel reads
s, the residual gradient and each input gradient once and writes d x once (6 and 5), in float32 arithmetic;
d x and d delta are the same array. The weight's gradient leaves as one float32 row per program, which XLA sums.
Timed in paired rounds against the same step with ``norm_backend="xla"`` (one H200, 2026-12-04,
bench/step_variants.py --variants=base,xla_norm --peer), it took the step from 215.5 to 214.5 ms: 1 ms, not the
2.6 that the bytes promise. Its block (8 rows, 16 warps) was chosen by reasoning, not by a sweep.

``config.model.norm_backend`` picks as ``mlp_backend`` does (mlp_kernels.py): "auto" runs the kernel on a single
GPU, "xla" never, "pallas" always (Pallas's interpreter off the GPU, as the tests run it; under
``jax.shard_map`` on a mesh of several devices, each row whole on one device).
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plt

from drope_jax import sharding

ROWS, WARPS = 8, 16  # rows a program takes (all of each, padded to a power of two); warps a program runs
_ROW = ("batch", "seq", None)  # the kernel needs each row whole on one device


def rmsnorm(x, weight, eps: float):
    x32 = x.astype(jnp.float32)
    normed = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + eps)
    return (normed * weight).astype(x.dtype)


def _add_norm_backward_kernel(s_ref, d_s_ref, weight_ref, *refs, rows: int, width: int, eps: float):
    """``rows`` rows of flat [N * D] arrays: refs are the n copies' gradients, then d x and d weight's row."""
    *d_n_refs, d_x_ref, d_weight_ref = refs
    d = weight_ref.shape[0]
    first = pl.program_id(0) * rows
    cols = jnp.arange(width)
    index = (first + jnp.arange(rows))[:, None] * d + cols[None, :]
    inside = jnp.broadcast_to(cols[None, :] < d, (rows, width))

    def load(ref):
        return plt.load(ref.at[index], mask=inside, other=0).astype(jnp.float32)

    s = load(s_ref)
    weight = plt.load(weight_ref.at[cols], mask=cols < d, other=0).astype(jnp.float32)
    d_n = sum(load(ref) for ref in d_n_refs)
    r = jax.lax.rsqrt(jnp.sum(s * s, axis=1, keepdims=True) / d + eps)
    normed = s * r
    d_normed = d_n * weight
    d_s_through_norm = r * (d_normed - normed * (jnp.sum(d_normed * normed, axis=1, keepdims=True) / d))
    plt.store(d_x_ref.at[index], (load(d_s_ref) + d_s_through_norm).astype(d_x_ref.dtype), mask=inside)
    plt.store(d_weight_ref.at[pl.program_id(0) * width + cols], jnp.sum(d_n * normed, axis=0))


def add_norm_backward(s_BTD, d_s_BTD, weight_D, d_n_BTDs, eps: float, rows: int = ROWS, num_warps: int = WARPS):
    """(d x, d weight) of add_norm, where d x = d delta: one read of s, d s and each d n, one write of d x."""
    b, t, d = s_BTD.shape
    rows = math.gcd(t, rows)  # blocks within a sequence, so that d weight's rows reshape to [B, T / rows]
    width = pl.next_power_of_2(d)
    programs = b * t // rows
    kernel = functools.partial(_add_norm_backward_kernel, rows=rows, width=width, eps=eps)
    d_x, d_weight_rows = pl.pallas_call(  # no block specs: each program indexes the whole flat arrays itself
        kernel, grid=(programs,),
        out_shape=[jax.ShapeDtypeStruct((b * t * d,), s_BTD.dtype),
                   jax.ShapeDtypeStruct((programs * width,), jnp.float32)],
        compiler_params=plt.CompilerParams(num_warps=num_warps), interpret=sharding.target_platform() != "gpu",
    )(s_BTD.reshape(-1), d_s_BTD.reshape(-1), weight_D, *(a.reshape(-1) for a in d_n_BTDs))
    return d_x.reshape(b, t, d), d_weight_rows.reshape(b, t // rows, width)


def _xla_add_norm(x_BTD, delta_BTD, weight_D, eps, copies):
    s_BTD = x_BTD if delta_BTD is None else x_BTD + delta_BTD
    return s_BTD, (rmsnorm(s_BTD, weight_D, eps),) * copies


_pallas_add_norm = jax.custom_vjp(_xla_add_norm, nondiff_argnums=(3, 4))


def _pallas_add_norm_fwd(x_BTD, delta_BTD, weight_D, eps, copies):
    out = _xla_add_norm(x_BTD, delta_BTD, weight_D, eps, copies)
    return out, (out[0], weight_D)


def _pallas_add_norm_bwd(eps, copies, residuals, cotangents):
    s_BTD, weight_D = residuals
    d_s_BTD, d_n_BTDs = cotangents

    def kernel(s, d_s, weight, *d_ns):
        return add_norm_backward(s, d_s, weight, d_ns, eps)

    d_x_BTD, d_weight_rows = sharding.on_each_device(  # d weight's rows [B, T / rows, width] split as rows do
        kernel, (s_BTD, d_s_BTD, weight_D, *d_n_BTDs), (_ROW, _ROW, (None,)) + (_ROW,) * copies, (_ROW, _ROW))
    d_weight_D = jnp.sum(d_weight_rows, axis=(0, 1))[:weight_D.shape[0]].astype(weight_D.dtype)
    return d_x_BTD, d_x_BTD, d_weight_D


_pallas_add_norm.defvjp(_pallas_add_norm_fwd, _pallas_add_norm_bwd)


def uses_kernel(backend: str) -> bool:
    """Whether config.model.norm_backend ``backend`` runs the kernel here."""
    return sharding.kernel_implementation(backend, "config.model.norm_backend") == "pallas"


def add_norm(x_BTD, delta_BTD, weight_D, eps: float, copies: int, backend: str = "auto"):
    """(x + delta, ``copies`` references to rmsnorm(x + delta) * weight), with the backward ``backend`` picks
    (config.model.norm_backend). A ``delta`` of None adds nothing (XLA's backward)."""
    pallas = delta_BTD is not None and uses_kernel(backend)
    return (_pallas_add_norm if pallas else _xla_add_norm)(x_BTD, delta_BTD, weight_D, eps, copies)
