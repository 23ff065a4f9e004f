"""Causal attention. The softmax scale stays head_dim^-0.5 in every position mode."""

from __future__ import annotations

import jax


def causal_attention(q_BTNH, k_BSKH, v_BSKH, implementation: str | None = None):
    """Grouped-query causal attention; N must be a multiple of K."""
    return jax.nn.dot_product_attention(
        q_BTNH, k_BSKH, v_BSKH, is_causal=True, scale=q_BTNH.shape[-1] ** -0.5,
        implementation=implementation,
    )
