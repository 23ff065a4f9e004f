"""The SwiGLU's backward as one Pallas (Triton) kernel for NVIDIA GPUs.

``swiglu(gate, up, backend)`` is silu(gate) * up. Its forward is XLA's either way (bit for bit the same); the
backend picks its backward. Left to autodiff, XLA computes d up and d gate in two passes (one reads the incoming
gradient and gate and writes d up, the other reads the incoming gradient, gate and up and writes d gate): 7 reads
and writes of a [B, T, F] array. The kernel makes one pass, three reads and two writes, in float32 arithmetic. In
the Table 4 step on one H200 (bf16[32, 1024, 4864] a layer) it took the step from 213.1 to 209.3 ms, timed in
paired rounds (2026-12-04, bench/step_variants.py; docs/performance.md, "The SwiGLU's Pallas kernel");
bench/mlp_kernels.py sweeps its launch parameters.

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
_ACTIVATION = ("batch", "seq", "act_mlp")


def _backward_kernel(d_h_ref, gate_ref, up_ref, d_gate_ref, d_up_ref):
    d_h, gate, up = (ref[...].astype(jnp.float32) for ref in (d_h_ref, gate_ref, up_ref))
    sig = 1 / (1 + jnp.exp(-gate))
    d_up_ref[...] = (d_h * gate * sig).astype(d_up_ref.dtype)
    d_gate_ref[...] = (d_h * up * sig * (1 + gate * (1 - sig))).astype(d_gate_ref.dtype)


def swiglu_backward(d_h, gate, up, block: int = BLOCK, num_warps: int = WARPS):
    """(d gate, d up) of silu(gate) * up, for arrays of one shape, in one read of each and one write of each."""
    n = gate.size
    block = math.gcd(n, block)  # a power of two that divides the flattened arrays
    spec = pl.BlockSpec((block,), lambda i: (i,))
    d_gate, d_up = pl.pallas_call(
        _backward_kernel, out_shape=[jax.ShapeDtypeStruct((n,), gate.dtype)] * 2, grid=(n // block,),
        in_specs=[spec] * 3, out_specs=[spec] * 2, compiler_params=plt.CompilerParams(num_warps=num_warps),
        interpret=sharding.target_platform() != "gpu")(*(a.reshape(-1) for a in (d_h, gate, up)))
    return d_gate.reshape(gate.shape), d_up.reshape(up.shape)


@jax.custom_vjp
def pallas_swiglu(gate, up):
    return jax.nn.silu(gate) * up


pallas_swiglu.defvjp(lambda gate, up: (pallas_swiglu(gate, up), (gate, up)),
                     lambda residuals, d_h: swiglu_backward(d_h, *residuals))


def swiglu(gate_BTF, up_BTF, backend: str = "auto"):
    """silu(gate) * up, with the backward ``backend`` picks (config.model.mlp_backend)."""
    if sharding.kernel_implementation(backend, "config.model.mlp_backend") == "xla":
        return jax.nn.silu(gate_BTF) * up_BTF
    return sharding.on_each_device(pallas_swiglu, (gate_BTF, up_BTF), (_ACTIVATION, _ACTIVATION), _ACTIVATION)
