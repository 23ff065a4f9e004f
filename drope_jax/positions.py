"""Position encodings, chosen at call time. RoPE has no parameters, so dropping it changes none."""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp

POS_KINDS = ("rope", "nope")


@dataclasses.dataclass(frozen=True)
class PosEncoding:
    """How attention sees positions. Hashable, so it can select a compiled step."""

    kind: str = "rope"

    def __post_init__(self):
        if self.kind not in POS_KINDS:
            raise ValueError(f"position encoding {self.kind!r} is not one of {POS_KINDS}")


ROPE = PosEncoding("rope")
NOPE = PosEncoding("nope")


def rope_inv_freq(head_dim: int, theta: float) -> jnp.ndarray:
    """Hugging Face Llama's inverse frequencies: theta^(-2i/head_dim), shape [head_dim // 2]."""
    return 1.0 / (theta ** (jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim))


def rotate_half(x):
    x1, x2 = jnp.split(x, 2, axis=-1)
    return jnp.concatenate([-x2, x1], axis=-1)


def apply_rope(x_BTNH, positions_BT, theta: float):
    """Rotates q or k in the rotate_half layout of HF Llama, so exported weights need no permutation."""
    inv_freq_F = rope_inv_freq(x_BTNH.shape[-1], theta)
    angles_BTF = positions_BT[..., None].astype(jnp.float32) * inv_freq_F
    angles_BTH = jnp.concatenate([angles_BTF, angles_BTF], axis=-1)[:, :, None, :]
    cos, sin = jnp.cos(angles_BTH), jnp.sin(angles_BTH)
    x = x_BTNH.astype(jnp.float32)
    return (x * cos + rotate_half(x) * sin).astype(x_BTNH.dtype)


def encode(pos: PosEncoding, x_BTNH, positions_BT, theta: float):
    if pos.kind == "rope":
        return apply_rope(x_BTNH, positions_BT, theta)
    return x_BTNH  # NoPE: the identity rotation (cos=1, sin=0), as in the official recipe
