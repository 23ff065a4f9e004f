"""Position encodings, chosen at call time. RoPE has no parameters, so dropping or rescaling it changes none.

A ``PosEncoding`` says, for one forward pass:

- ``kind``: "rope", "alibi" (a linear bias on the logits, Press et al.) or "nope" (no position signal);
- a per-layer pattern: with ``nope_every=n`` every n-th layer (layers n-1, 2n-1, ...) drops the encoding
  and attends over the whole context, as SmolLM3's ``no_rope_layer_interval``; with ``window=w`` the
  other layers see only the last w tokens (sliding-window attention). RNoPE-SWA is
  ``PosEncoding("rope", nope_every=4, window=w)``;
- RoPE scaling applied at evaluation time to a RoPE model, by ``factor``: "linear" (PI), "ntk"
  (NTK-aware) or "yarn" (with its attention temperature); the formulas are Hugging Face
  transformers' (``modeling_rope_utils``), written here for JAX;
- an optional query temperature for long inputs, off by default: a constant ``logit_scale`` on the
  attention logits (the DroPE paper's softmax temperature past the context is
  ``logit_scale=temperature_beta(c, factor)``), and ``log_n`` scaling (queries past ``original_length``
  scaled by log(position + 1) / log(original_length), as in Qwen's logn attention).
"""

from __future__ import annotations

import dataclasses
import math

import jax.numpy as jnp
import numpy as np

POS_KINDS = ("rope", "nope", "alibi")
ROPE_SCALINGS = ("none", "linear", "ntk", "yarn")


@dataclasses.dataclass(frozen=True)
class PosEncoding:
    """How attention sees positions. Hashable, so it can select a compiled step (a static jit argument)."""

    kind: str = "rope"
    nope_every: int = 0  # >0: layers nope_every-1, 2*nope_every-1, ... use no encoding and full attention
    window: int = 0  # >0: the other layers attend to the last `window` tokens only (the token itself included)
    scaling: str = "none"  # RoPE at evaluation: "linear" (PI), "ntk", "yarn"
    factor: float = 1.0  # the RoPE scaling factor: the target length over original_length
    original_length: int = 0  # the training context; YaRN and log_n need it
    yarn_beta_fast: float = 32.0
    yarn_beta_slow: float = 1.0
    logit_scale: float = 1.0  # multiplies every attention logit (an inverse softmax temperature)
    log_n: bool = False  # scale queries past original_length by log(position + 1) / log(original_length)

    def __post_init__(self):
        def refuse(msg):
            raise ValueError(f"PosEncoding: {msg}")

        if self.kind not in POS_KINDS:
            refuse(f"kind={self.kind!r} is not one of {POS_KINDS}")
        if self.scaling not in ROPE_SCALINGS:
            refuse(f"scaling={self.scaling!r} is not one of {ROPE_SCALINGS}")
        if self.scaling != "none" and self.kind != "rope":
            refuse(f"scaling={self.scaling!r} rescales RoPE; kind is {self.kind!r}")
        if self.nope_every < 0 or self.window < 0:
            refuse(f"nope_every ({self.nope_every}) and window ({self.window}) must be >= 0")
        if self.window and self.kind == "nope":
            refuse("a sliding window applies to the layers that encode positions; kind='nope' has none "
                   "(use kind='rope' with nope_every and window for RNoPE-SWA)")
        if self.factor < 1.0:
            refuse(f"factor={self.factor} must be >= 1")
        if (self.scaling == "yarn" or self.log_n) and self.original_length <= 0:
            refuse("scaling='yarn' and log_n need original_length, the training context in tokens")

    def positional_layers(self, num_layers: int) -> np.ndarray:
        """[L] bool: the layers that apply ``kind`` (the others are NoPE with full attention)."""
        if self.kind == "nope":
            return np.zeros(num_layers, bool)
        if not self.nope_every:
            return np.ones(num_layers, bool)
        return (np.arange(num_layers) + 1) % self.nope_every != 0

    def describe(self) -> str:
        parts = [self.kind]
        if self.nope_every:
            parts.append(f"NoPE every {self.nope_every} layers")
        if self.window:
            parts.append(f"window {self.window}")
        if self.scaling != "none":
            parts.append(f"{self.scaling} x{self.factor:g}")
        if self.log_n:
            parts.append("log-n")
        if self.logit_scale != 1.0:
            parts.append(f"logit scale {self.logit_scale:g}")
        return ", ".join(parts)


ROPE = PosEncoding("rope")
NOPE = PosEncoding("nope")


def temperature_beta(c: float, factor: float) -> float:
    """The DroPE paper's softmax temperature at ``factor`` x the training context (its Appendix C.2, after
    Wang et al. 2024): every attention logit times 1 + c ln(factor); exactly 1 within the context."""
    return 1.0 + c * math.log(factor) if factor > 1 else 1.0


def rope_inv_freq(head_dim: int, theta: float) -> np.ndarray:
    """Hugging Face Llama's inverse frequencies: theta^(-2i/head_dim), float32 [head_dim // 2]. The tables
    are NumPy: constants under jit, and data (``as_data``) without compiling anything to compute them."""
    return (1.0 / (np.float32(theta) ** (np.arange(0, head_dim, 2, dtype=np.float32) / np.float32(head_dim))))


def ntk_theta(theta: float, head_dim: int, factor: float) -> float:
    """NTK-aware scaling: a larger base, theta * factor^(d / (d - 2)). This is transformers'
    ``_compute_dynamic_ntk_parameters`` at ``seq_len = factor * original`` with its own factor 1."""
    return theta * factor ** (head_dim / (head_dim - 2))


def yarn_attention_factor(factor: float) -> float:
    """YaRN's temperature sqrt(1/t) = 0.1 ln(s) + 1, multiplied into cos and sin (so logits get its square)."""
    return 1.0 if factor <= 1 else 0.1 * math.log(factor) + 1.0


def yarn_inv_freq(head_dim: int, theta: float, factor: float, original_length: int,
                  beta_fast: float = 32.0, beta_slow: float = 1.0) -> np.ndarray:
    """YaRN ("NTK-by-parts"): dimensions that rotate more than beta_fast times over the original context
    keep their frequency, those rotating fewer than beta_slow times are interpolated by ``factor``,
    with a linear ramp between (transformers' ``_compute_yarn_parameters``, truncate=True)."""
    def correction_dim(rotations):
        return head_dim * math.log(original_length / (rotations * 2 * math.pi)) / (2 * math.log(theta))

    low = max(math.floor(correction_dim(beta_fast)), 0)
    high = min(math.ceil(correction_dim(beta_slow)), head_dim - 1)
    if low == high:
        high += 0.001  # as transformers: avoids a division by zero
    ramp_F = np.clip((np.arange(head_dim // 2, dtype=np.float32) - low) / np.float32(high - low), 0, 1)
    extrapolated_F = rope_inv_freq(head_dim, theta)
    return (extrapolated_F / np.float32(factor) * ramp_F + extrapolated_F * (1 - ramp_F)).astype(np.float32)


def scaled_inv_freq(pos: PosEncoding, head_dim: int, theta: float) -> tuple[np.ndarray, float]:
    """The RoPE inverse frequencies [head_dim // 2] and the factor on cos/sin for ``pos.scaling``."""
    if pos.scaling == "linear":
        return rope_inv_freq(head_dim, theta) / np.float32(pos.factor), 1.0
    if pos.scaling == "ntk":
        return rope_inv_freq(head_dim, ntk_theta(theta, head_dim, pos.factor)), 1.0
    if pos.scaling == "yarn":
        inv_freq = yarn_inv_freq(head_dim, theta, pos.factor, pos.original_length, pos.yarn_beta_fast,
                                 pos.yarn_beta_slow)
        return inv_freq, yarn_attention_factor(pos.factor)
    return rope_inv_freq(head_dim, theta), 1.0


def as_data(pos: PosEncoding, head_dim: int, theta: float) -> tuple[PosEncoding, tuple | None]:
    """``pos`` split into what must be static and what can be data. For RoPE the table is (inverse
    frequencies [head_dim // 2], factor on cos/sin, logit scale), arrays: unscaled RoPE, PI, NTK and YaRN at
    one length then share one compiled program, whatever the logit scale, and so does NoPE: RoPE with zero
    frequencies rotates by angle 0 (cos 1, sin 0), which returns q and k unchanged, bit for bit. A logit
    scale of 1 multiplies q by 1, which changes no bit either. Other encodings are returned as they are."""
    # original_length stays static only where log_n needs it; YaRN's use of it is in the table
    static = dict(scaling="none", factor=1.0, logit_scale=1.0,
                  original_length=pos.original_length if pos.log_n else 0)
    logit_scale = np.float32(pos.logit_scale)
    if pos.kind == "nope" and not pos.nope_every:
        zeros_F = np.zeros(head_dim // 2, np.float32)
        return dataclasses.replace(pos, kind="rope", **static), (zeros_F, np.float32(1.0), logit_scale)
    if pos.kind != "rope":
        return pos, None
    inv_freq_F, scale = scaled_inv_freq(pos, head_dim, theta)
    return dataclasses.replace(pos, **static), (inv_freq_F, np.float32(scale), logit_scale)


def rotate_half(x):
    x1, x2 = jnp.split(x, 2, axis=-1)
    return jnp.concatenate([-x2, x1], axis=-1)


def apply_rope(x_BTNH, positions_BT, theta: float, inv_freq_F=None, cos_sin_scale: float = 1.0):
    """Rotates q or k in the rotate_half layout of HF Llama, so exported weights need no permutation."""
    if inv_freq_F is None:
        inv_freq_F = rope_inv_freq(x_BTNH.shape[-1], theta)
    angles_BTF = positions_BT[..., None].astype(jnp.float32) * inv_freq_F
    angles_BTH = jnp.concatenate([angles_BTF, angles_BTF], axis=-1)[:, :, None, :]
    cos, sin = jnp.cos(angles_BTH) * cos_sin_scale, jnp.sin(angles_BTH) * cos_sin_scale
    x = x_BTNH.astype(jnp.float32)
    return (x * cos + rotate_half(x) * sin).astype(x_BTNH.dtype)


def encode(pos: PosEncoding, x_BTNH, positions_BT, theta: float, positional=True, pos_table=None):
    """q or k as ``pos`` presents it to attention. ``positional`` (a bool, or a traced per-layer bool
    under the layer scan) is False in the NoPE layers of a per-layer pattern. ``pos_table``: the RoPE
    table of ``as_data`` (traced), used instead of the one ``pos`` describes."""
    if pos.kind != "rope" or positional is False:
        return x_BTNH  # NoPE (and ALiBi, which acts on the logits): the identity rotation (cos=1, sin=0)
    inv_freq_F, scale = scaled_inv_freq(pos, x_BTNH.shape[-1], theta) if pos_table is None else pos_table[:2]
    rotated = apply_rope(x_BTNH, positions_BT, theta, inv_freq_F, scale)
    return rotated if positional is True else jnp.where(positional, rotated, x_BTNH)


def query_scale(pos: PosEncoding, positions_BT, pos_table=None):
    """[B, T] factor on the queries (the logit scale and ``log_n``), or None when neither applies. The logit
    scale is the table's (traced, so always applied) when ``pos_table`` is given, else ``pos.logit_scale``."""
    logit_scale = pos.logit_scale if pos_table is None else pos_table[2]
    scale = None
    if pos.log_n:
        n = positions_BT.astype(jnp.float32) + 1.0
        scale = jnp.maximum(1.0, jnp.log(n) / math.log(pos.original_length))
    if pos_table is not None or logit_scale != 1.0:
        scale = logit_scale if scale is None else scale * logit_scale
    return scale


def alibi_slopes(num_heads: int) -> np.ndarray:
    """ALiBi's per-head slopes (Press et al.; transformers' Bloom ``_get_alibi_slopes``): the geometric
    sequence 2^(-8/n), 2^(-16/n), ... for the largest power of two n <= num_heads, then every other
    slope of the sequence for 2n for the remaining heads."""
    def geometric(n, count, step=1):
        base = 2.0 ** (-8.0 / n)
        return [base ** p for p in range(1, 1 + step * count, step)]

    closest = 2 ** math.floor(math.log2(num_heads))
    slopes = geometric(closest, closest)
    if closest != num_heads:
        slopes += geometric(2 * closest, num_heads - closest, step=2)
    return np.asarray(slopes, np.float32)
