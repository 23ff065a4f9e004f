"""Causal attention. The softmax scale stays head_dim^-0.5 in every position mode.

The kernel is chosen by platform: cuDNN's fused attention on NVIDIA GPUs (the XLA path
materializes T x T scores and is ~19x slower at 8K tokens on an H100), XLA elsewhere.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def default_implementation(dtype) -> str:
    """cuDNN on GPU for 16-bit inputs (its only dtypes), XLA otherwise."""
    on_gpu = jax.devices()[0].platform == "gpu"
    return "cudnn" if on_gpu and jnp.dtype(dtype) in (jnp.bfloat16, jnp.float16) else "xla"


def causal_attention(q_BTNH, k_BSKH, v_BSKH, segment_ids_BT=None, implementation: str | None = None):
    """Grouped-query causal attention; N must be a multiple of K. With ``segment_ids_BT`` a token
    attends only within its own document of a packed row."""
    implementation = implementation or default_implementation(q_BTNH.dtype)
    mask_B1TS = None
    if segment_ids_BT is not None:
        mask_B1TS = (segment_ids_BT[:, :, None] == segment_ids_BT[:, None, :])[:, None]
    return jax.nn.dot_product_attention(
        q_BTNH, k_BSKH, v_BSKH, mask=mask_B1TS, is_causal=True, scale=q_BTNH.shape[-1] ** -0.5,
        implementation=implementation,
    )
