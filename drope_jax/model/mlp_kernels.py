"""The SwiGLU's backward as one Pallas (Triton) kernel for NVIDIA GPUs (and a forward kernel, off: it saved nothing).

``swiglu(gate, up, backend)`` is silu(gate) * up. Its forward is XLA's (bit for bit the same) unless
``FORWARD_KERNEL``; the backend picks its backward. Left to autodiff, XLA computes d up and d gate in two passes
(one reads the incoming gradient and gate and writes d up, the other reads the incoming gradient, gate and up and
writes d gate): 7 reads and writes of a [B, T, F] array. The kernel makes one pass, three reads and two writes, in
float32 arithmetic. In the Table 4 step on one H200 (bf16[32, 1024, 4864] a layer) it took the step from 213.1 to
209.3 ms, timed in paired rounds (2026-12-04, bench/step_variants.py; docs/performance.md, "The SwiGLU's Pallas
kernel"); bench/mlp_kernels.py sweeps its launch parameters.

``config.model.mlp_backend`` picks as ``config.model.loss_backend`` does (drope_jax/model/loss.py): "auto" runs
the kernel on a single GPU, "xla" never, "pallas" always (Pallas's interpreter off the GPU, as the tests run it;
under ``jax.shard_map`` on a mesh of several devices, where it is element-wise and so takes any layout).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plt

from drope_jax import sharding

BLOCK, WARPS = 8192, 8  # elements a program reads of each input; warps a program runs
# A forward kernel as well (one read of gate and up, one write of the product). Off: in paired rounds on one H200
# (2026-12-05, bench/step_variants.py's `mlp_forward_kernel`) the step took 0.3 / 0.1 ms longer with it (each step
# waited for / back to back), XLA's fusion of the same pass being as fast.
FORWARD_KERNEL = False
_ACTIVATION = ("batch", "seq", "act_mlp")


def _forward_kernel(gate_ref, up_ref, h_ref):
    gate, up = (ref[...].astype(jnp.float32) for ref in (gate_ref, up_ref))
    h_ref[...] = (gate / (1 + jnp.exp(-gate)) * up).astype(h_ref.dtype)


def _backward_kernel(d_h_ref, gate_ref, up_ref, d_gate_ref, d_up_ref):
    d_h, gate, up = (ref[...].astype(jnp.float32) for ref in (d_h_ref, gate_ref, up_ref))
    sig = 1 / (1 + jnp.exp(-gate))
    d_up_ref[...] = (d_h * gate * sig).astype(d_up_ref.dtype)
    d_gate_ref[...] = (d_h * up * sig * (1 + gate * (1 - sig))).astype(d_gate_ref.dtype)


def _elementwise(kernel, outputs: int, block: int, num_warps: int, *arrays):
    """``kernel`` over arrays of one shape and dtype, flattened into blocks of ``block`` elements; ``outputs``
    arrays of that shape and dtype come back."""
    n = arrays[0].size
    block = math.gcd(n, block)  # a power of two that divides the flattened arrays
    spec = pl.BlockSpec((block,), lambda i: (i,))
    results = pl.pallas_call(
        kernel, out_shape=[jax.ShapeDtypeStruct((n,), arrays[0].dtype)] * outputs, grid=(n // block,),
        in_specs=[spec] * len(arrays), out_specs=[spec] * outputs,
        compiler_params=plt.CompilerParams(num_warps=num_warps),
        interpret=sharding.target_platform() != "gpu")(*(a.reshape(-1) for a in arrays))
    return [r.reshape(arrays[0].shape) for r in results]


def swiglu_forward(gate, up, block: int = BLOCK, num_warps: int = WARPS):
    """silu(gate) * up in one read of each and one write, in float32 arithmetic rounded once."""
    return _elementwise(_forward_kernel, 1, block, num_warps, gate, up)[0]


def swiglu_backward(d_h, gate, up, block: int = BLOCK, num_warps: int = WARPS):
    """(d gate, d up) of silu(gate) * up, for arrays of one shape, in one read of each and one write of each."""
    return tuple(_elementwise(_backward_kernel, 2, block, num_warps, d_h, gate, up))


def _with_backward_kernel(forward):
    """``forward`` under a custom_vjp whose backward is the kernel: one with XLA's forward, one with the forward
    kernel, picked where the op is called."""
    fn = jax.custom_vjp(forward)
    fn.defvjp(lambda gate, up: (forward(gate, up), (gate, up)), lambda residuals, d_h: swiglu_backward(d_h, *residuals))
    return fn


pallas_swiglu = _with_backward_kernel(lambda gate, up: jax.nn.silu(gate) * up)
pallas_swiglu_both_kernels = _with_backward_kernel(lambda gate, up: swiglu_forward(gate, up))


def swiglu(gate_BTF, up_BTF, backend: str = "auto"):
    """silu(gate) * up, with the backward ``backend`` picks (config.model.mlp_backend)."""
    if sharding.kernel_implementation(backend, "config.model.mlp_backend") == "xla":
        return jax.nn.silu(gate_BTF) * up_BTF
    fn = pallas_swiglu_both_kernels if FORWARD_KERNEL else pallas_swiglu
    return sharding.on_each_device(fn, (gate_BTF, up_BTF), (_ACTIVATION, _ACTIVATION), _ACTIVATION)
