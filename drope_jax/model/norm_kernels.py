"""A residual add and the RMSNorm after it as one op, whose forward and backward are each one Pallas (Triton)
kernel on NVIDIA GPUs.

``add_norm(x, delta, weight, eps, copies, backend)`` returns ``(s, (n, ...))``: s = x + delta, the residual
stream going on, and ``copies`` references to n = rmsnorm(s) * weight, one for each matrix product that reads it
(query, key and value; or gate and up). The copies are the point: each product hands back its own input gradient,
so the backward receives them apart.

Forward: XLA makes two passes, a reduction that reads x and delta and writes s and each row's scale, and an
element-wise pass that reads s again and writes n. A kernel reads x and delta once and writes s and n once. It
rounds as XLA does; only the order of the sum over each row differs. In paired rounds against the step with XLA's
forward (one H200, 2026-12-05, bench/step_variants.py --variants=base,norm_forward_kernel,... --peer, two calls),
it saved 0.3 and 0.4 ms a step with each step waited for, and 0.6 ms in both calls launched back to back
(211.5 -> 211.2 and 212.3 -> 211.9 ms; 211.0 -> 210.4 and 211.8 -> 211.2). ``FORWARD_KERNEL = False`` goes back to
XLA's forward.

Backward: left to autodiff, XLA makes two passes over [B, T, D] arrays: one reads s and the products' input
gradients, writes their sum and reduces each row; the other reads the sum, s and the residual stream's gradient
and writes d x. In the Table 4 step that is 9 reads and writes of a bf16[32, 1024, 896] array at the attention's
norm and 8 at the MLP's, 7.4 ms a step (docs/performance.md, "The last 1%"). The kernel reads s, the residual
gradient and each input gradient once and writes d x once (6 and 5), in float32 arithmetic; d x and d delta are
the same array. The weight's gradient leaves as one float32 row per program, which XLA sums. Timed in paired
rounds against the same step with ``norm_backend="xla"`` (one H200, 2026-12-04, bench/step_variants.py
--variants=base,xla_norm --peer), the backward kernel alone took the step from 215.5 to 214.5 ms: 1 ms, not the
2.6 that the bytes promise. A program can also take more rows than it holds at a time (``chunk``), which leaves
fewer d weight rows for XLA to sum; bench/norm_kernels.py sweeps both kernels' launches. Its timings of one kernel
call were within their noise (0.21 to 0.34 ms for most launches; one H200, 2026-12-05), so the launch was chosen in
the step: 4 rows a program, 4 warps, against the first guess of 8 rows and 16 warps, saved 0.7 ms a step in one
call and 0.8 (waited for) and 0.9 ms (back to back) in another (bench/step_variants.py's ``norm_launch_4``).

``config.model.norm_backend`` picks as ``mlp_backend`` does (mlp_kernels.py): "auto" runs the kernels on a single
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

# Rows a program takes (all of each, padded to a power of two), rows it holds at a time, warps it runs.
ROWS, CHUNK, WARPS = 4, 4, 4
# The forward as a kernel too (timed in the step above); False keeps XLA's forward with the backward kernel.
FORWARD_KERNEL = True
_ROW = ("batch", "seq", None)  # the kernel needs each row whole on one device


def rmsnorm(x, weight, eps: float):
    x32 = x.astype(jnp.float32)
    normed = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + eps)
    return (normed * weight).astype(x.dtype)


def _row_block(first_row, rows: int, width: int, d: int):
    """Rows ``first_row`` to ``first_row + rows`` of flat [N * d] arrays, padded to ``width`` lanes: (index, mask,
    load), where load(ref) reads them in float32."""
    cols = jnp.arange(width)
    index = (first_row + jnp.arange(rows))[:, None] * d + cols[None, :]
    inside = jnp.broadcast_to(cols[None, :] < d, (rows, width))

    def load(ref):
        return plt.load(ref.at[index], mask=inside, other=0).astype(jnp.float32)

    return index, inside, load


def _load_weight(weight_ref, width: int):
    cols = jnp.arange(width)
    return plt.load(weight_ref.at[cols], mask=cols < weight_ref.shape[0], other=0).astype(jnp.float32)


def _for_each_chunk(count: int, body, carry):
    """carry = body(i, carry) for i < count: a loop only where a program has more than one chunk of rows."""
    return body(0, carry) if count == 1 else jax.lax.fori_loop(0, count, body, carry)


def _add_norm_forward_kernel(x_ref, delta_ref, weight_ref, s_ref, n_ref, *, rows: int, chunk: int, width: int,
                             eps: float):
    d = weight_ref.shape[0]
    weight = _load_weight(weight_ref, width)
    first = pl.program_id(0) * rows  # outside the loop: Pallas's interpreter cannot lower it inside one

    def block(i, carry):
        index, inside, load = _row_block(first + i * chunk, chunk, width, d)
        s = (load(x_ref) + load(delta_ref)).astype(s_ref.dtype)  # one rounding, as XLA's add of two bf16 arrays
        plt.store(s_ref.at[index], s, mask=inside)
        s = s.astype(jnp.float32)
        normed = s * jax.lax.rsqrt(jnp.sum(s * s, axis=1, keepdims=True) / d + eps)
        plt.store(n_ref.at[index], (normed * weight).astype(n_ref.dtype), mask=inside)
        return carry

    _for_each_chunk(rows // chunk, block, None)


def _add_norm_backward_kernel(s_ref, d_s_ref, weight_ref, *refs, rows: int, chunk: int, width: int, eps: float):
    """refs are the n copies' gradients, then d x and d weight's rows (one a program, summed over its rows)."""
    *d_n_refs, d_x_ref, d_weight_ref = refs
    d = weight_ref.shape[0]
    weight = _load_weight(weight_ref, width)
    program = pl.program_id(0)  # outside the loop, as in the forward

    def block(i, d_weight):
        index, inside, load = _row_block(program * rows + i * chunk, chunk, width, d)
        s = load(s_ref)
        d_n = sum(load(ref) for ref in d_n_refs)
        r = jax.lax.rsqrt(jnp.sum(s * s, axis=1, keepdims=True) / d + eps)
        normed = s * r
        d_normed = d_n * weight
        d_s_through_norm = r * (d_normed - normed * (jnp.sum(d_normed * normed, axis=1, keepdims=True) / d))
        plt.store(d_x_ref.at[index], (load(d_s_ref) + d_s_through_norm).astype(d_x_ref.dtype), mask=inside)
        return d_weight + jnp.sum(d_n * normed, axis=0)

    d_weight = _for_each_chunk(rows // chunk, block, jnp.zeros((width,), jnp.float32))
    plt.store(d_weight_ref.at[program * width + jnp.arange(width)], d_weight)


def _row_call(kernel, shape_BTD, rows: int, chunk: int, num_warps: int, eps: float, out_shape, *args_BTD):
    """``kernel`` over [B, T, D] arrays (flattened), ``rows`` rows a program, ``chunk`` of them at a time (the
    block in registers). ``out_shape(programs, width)`` gives the outputs; a program's rows stay within a sequence
    (rows divides T)."""
    b, t, d = shape_BTD
    rows = math.gcd(t, rows)
    width = pl.next_power_of_2(d)
    programs = b * t // rows
    return pl.pallas_call(  # no block specs: each program indexes the whole flat arrays itself
        functools.partial(kernel, rows=rows, chunk=math.gcd(rows, chunk), width=width, eps=eps), grid=(programs,),
        out_shape=out_shape(programs, width), compiler_params=plt.CompilerParams(num_warps=num_warps),
        interpret=sharding.target_platform() != "gpu",
    )(*(a.reshape(-1) if a.ndim == 3 else a for a in args_BTD))


def add_norm_forward(x_BTD, delta_BTD, weight_D, eps: float, rows: int = ROWS, chunk: int = CHUNK,
                     num_warps: int = WARPS):
    """(s, n) of add_norm: one read of x and delta, one write of s and of n."""
    flat = jax.ShapeDtypeStruct((x_BTD.size,), x_BTD.dtype)
    s, n = _row_call(_add_norm_forward_kernel, x_BTD.shape, rows, chunk, num_warps, eps,
                     lambda programs, width: [flat, flat], x_BTD, delta_BTD, weight_D)
    return s.reshape(x_BTD.shape), n.reshape(x_BTD.shape)


def add_norm_backward(s_BTD, d_s_BTD, weight_D, d_n_BTDs, eps: float, rows: int = ROWS, chunk: int = CHUNK,
                      num_warps: int = WARPS):
    """(d x, d weight's rows [B, T / rows, width]) of add_norm, where d x = d delta: one read of s, d s and each
    d n, one write of d x."""
    def out_shape(programs, width):
        return [jax.ShapeDtypeStruct((s_BTD.size,), s_BTD.dtype),
                jax.ShapeDtypeStruct((programs * width,), jnp.float32)]

    d_x, d_weight_rows = _row_call(_add_norm_backward_kernel, s_BTD.shape, rows, chunk, num_warps, eps, out_shape,
                                   s_BTD, d_s_BTD, weight_D, *d_n_BTDs)
    return d_x.reshape(s_BTD.shape), d_weight_rows.reshape(s_BTD.shape[0], -1, pl.next_power_of_2(s_BTD.shape[2]))


def _xla_add_norm(x_BTD, delta_BTD, weight_D, eps, copies):
    s_BTD = x_BTD if delta_BTD is None else x_BTD + delta_BTD
    return s_BTD, (rmsnorm(s_BTD, weight_D, eps),) * copies


def _kernel_add_norm(x_BTD, delta_BTD, weight_D, eps, copies):
    s_BTD, n_BTD = sharding.on_each_device(functools.partial(add_norm_forward, eps=eps), (x_BTD, delta_BTD, weight_D),
                                           (_ROW, _ROW, (None,)), (_ROW, _ROW))
    return s_BTD, (n_BTD,) * copies


def _kernel_backward(eps, copies, residuals, cotangents):
    s_BTD, weight_D = residuals
    d_s_BTD, d_n_BTDs = cotangents

    def kernel(s, d_s, weight, *d_ns):
        return add_norm_backward(s, d_s, weight, d_ns, eps)

    d_x_BTD, d_weight_rows = sharding.on_each_device(  # d weight's rows [B, T / rows, width] split as rows do
        kernel, (s_BTD, d_s_BTD, weight_D, *d_n_BTDs), (_ROW, _ROW, (None,)) + (_ROW,) * copies, (_ROW, _ROW))
    d_weight_D = jnp.sum(d_weight_rows, axis=(0, 1))[:weight_D.shape[0]].astype(weight_D.dtype)
    return d_x_BTD, d_x_BTD, d_weight_D


def _with_backward_kernel(forward):
    """``forward`` under a custom_vjp whose backward is the kernel: one with XLA's forward, one with the forward
    kernel, picked where the op is called."""
    def forward_and_residuals(x_BTD, delta_BTD, weight_D, eps, copies):
        out = forward(x_BTD, delta_BTD, weight_D, eps, copies)
        return out, (out[0], weight_D)

    fn = jax.custom_vjp(forward, nondiff_argnums=(3, 4))
    fn.defvjp(forward_and_residuals, _kernel_backward)
    return fn


_backward_kernel_add_norm = _with_backward_kernel(_xla_add_norm)
_kernels_add_norm = _with_backward_kernel(_kernel_add_norm)


def uses_kernel(backend: str) -> bool:
    """Whether config.model.norm_backend ``backend`` runs the kernel here."""
    return sharding.kernel_implementation(backend, "config.model.norm_backend") == "pallas"


def add_norm(x_BTD, delta_BTD, weight_D, eps: float, copies: int, backend: str = "auto"):
    """(x + delta, ``copies`` references to rmsnorm(x + delta) * weight), with the backward ``backend`` picks
    (config.model.norm_backend). A ``delta`` of None adds nothing (XLA's backward)."""
    if delta_BTD is None or not uses_kernel(backend):
        return _xla_add_norm(x_BTD, delta_BTD, weight_D, eps, copies)
    with_kernels = _kernels_add_norm if FORWARD_KERNEL else _backward_kernel_add_norm
    return with_kernels(x_BTD, delta_BTD, weight_D, eps, copies)
