"""Causal attention. The softmax scale stays head_dim^-0.5 in every position mode."""

from __future__ import annotations

import jax


def causal_attention(q_BTNH, k_BSKH, v_BSKH, segment_ids_BT=None, implementation: str | None = None):
    """Grouped-query causal attention; N must be a multiple of K. With ``segment_ids_BT`` a token
    attends only within its own document of a packed row."""
    mask_B1TS = None
    if segment_ids_BT is not None:
        mask_B1TS = (segment_ids_BT[:, :, None] == segment_ids_BT[:, None, :])[:, None]
    return jax.nn.dot_product_attention(
        q_BTNH, k_BSKH, v_BSKH, mask=mask_B1TS, is_causal=True, scale=q_BTNH.shape[-1] ** -0.5,
        implementation=implementation,
    )
