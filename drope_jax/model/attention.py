"""Causal attention. The softmax scale stays head_dim^-0.5 in every position mode.

One function serves training, evaluation and cached decoding:

- a sliding window (``window``: the number of most recent keys a query sees, itself included);
- ALiBi (``alibi_slopes_N``: the bias -slope * (query index - key index) per query head);
- ``q_offset``: the queries continue the keys' sequence from this index on (a KV cache; keys past a
  query's own index, such as unfilled cache slots, are masked as the future);
- ``query_chunk``: queries processed that many at a time, so memory holds B x N x chunk x S logits
  rather than B x N x T x S (the path for long inputs on CPU).

A whole sequence attending to itself, unchunked, goes to a fused kernel with ``is_causal`` and a
static window, which needs no T x S mask. ``implementation`` ("auto", "xla", "cudnn" or "splash";
``ModelConfig.attention_backend``) picks it; "auto" goes by the platform the computation targets
(the mesh's devices, so an AOT compile for TPU on a CPU host counts as TPU):

- NVIDIA GPU: cuDNN's fused attention (XLA's materializes T x S scores: ~2x slower for the whole
  0.5B train step at 1K tokens, ~19x for attention alone at 8K);
- TPU: the Pallas splash-attention kernel (``drope_jax.model.splash``), document masks included;
- elsewhere: XLA.

On GPU ALiBi's bias goes to cuDNN too, rounded to the inputs' 16-bit dtype (cuDNN takes no other): a bias
of magnitude b moves by at most b * 2^-8 in bfloat16, the rounding q and k already carry. Document masks on
GPU, ALiBi on TPU, cached decoding and chunked queries take the XLA path; a fused backend asked for but not
usable says so once.
"""

from __future__ import annotations

import functools
import logging

import jax
import jax.numpy as jnp

from drope_jax import sharding
from drope_jax.model import splash
from drope_jax.model.config import ATTENTION_BACKENDS


def default_implementation(dtype, *, has_mask: bool = False, platform: str | None = None) -> str:
    """Off TPU: cuDNN on GPU for 16-bit inputs (its only dtypes) without a document mask, XLA otherwise."""
    on_gpu = (platform or jax.devices()[0].platform) == "gpu"
    if on_gpu and has_mask:
        _warn_once("attention with a document mask runs on the slower XLA path on GPU")
    fused_ok = on_gpu and not has_mask and jnp.dtype(dtype) in (jnp.bfloat16, jnp.float16)
    return "cudnn" if fused_ok else "xla"


def choose_implementation(implementation: str | None, dtype, seq_len: int, *, has_bias: bool,
                          has_mask: bool) -> str:
    """The backend of one unchunked self-attention call: "xla", "cudnn" or "splash"."""
    if implementation not in (None,) + ATTENTION_BACKENDS:
        raise ValueError(f"attention implementation {implementation!r}: choose one of {ATTENTION_BACKENDS} "
                         "(config.model.attention_backend)")
    if implementation in (None, "auto"):
        platform = sharding.target_platform()
        if platform != "tpu":
            return default_implementation(dtype, has_mask=has_mask, platform=platform)
        implementation = "splash"
    if implementation == "splash" and has_bias:
        _warn_once("splash attention has no ALiBi bias: attention runs on the slower XLA path")
        return "xla"
    if implementation == "splash" and not splash.supports(seq_len):
        _warn_once(f"splash attention needs a sequence length divisible by {splash.BLOCK}: attention runs on "
                   "the slower XLA path")
        return "xla"
    return implementation


@functools.cache
def _warn_once(message: str) -> None:
    logging.getLogger(__name__).warning(message)


def alibi_bias(alibi_slopes_N, q_index_T, k_index_S):
    """[1, N, T, S] float32: -slope * (query index - key index); the future is masked separately."""
    distance_TS = (q_index_T[:, None] - k_index_S[None, :]).astype(jnp.float32)
    return -jnp.asarray(alibi_slopes_N, jnp.float32)[None, :, None, None] * distance_TS[None, None]


def visible(q_index_T, k_index_S, window: int | None = None):
    """[T, S] bool: causal, and within the last ``window`` keys when given."""
    delta_TS = q_index_T[:, None] - k_index_S[None, :]
    keep_TS = delta_TS >= 0
    return keep_TS & (delta_TS < window) if window else keep_TS


def causal_attention(q_BTNH, k_BSKH, v_BSKH, segment_ids_BT=None, implementation: str | None = None, *,
                     window: int | None = None, alibi_slopes_N=None, q_offset=None, query_chunk: int | None = None):
    """Grouped-query causal attention; N must be a multiple of K. With ``segment_ids_BT`` a token
    attends only within its own document of a packed row (only when queries and keys are the same
    sequence). See the module docstring for the other arguments."""
    t, s = q_BTNH.shape[1], k_BSKH.shape[1]
    if window is not None and window <= 0:
        window = None
    if q_offset is None and (query_chunk is None or t <= query_chunk):
        return _self_attention(q_BTNH, k_BSKH, v_BSKH, segment_ids_BT, implementation, window, alibi_slopes_N)
    if segment_ids_BT is not None and (q_offset is not None or t != s):
        raise ValueError("causal_attention: segment_ids_BT needs queries and keys of one sequence (no q_offset)")
    offset = jnp.asarray(0 if q_offset is None else q_offset, jnp.int32)
    chunk_implementation = None if implementation in ("auto", "splash") else implementation  # no splash here
    chunk = t if query_chunk is None else min(query_chunk, t)

    def attend_chunk(q_BCNH, start):
        q_index_C = offset + start + jnp.arange(q_BCNH.shape[1])
        k_index_S = jnp.arange(s)
        mask_B1CS = visible(q_index_C, k_index_S, window)[None, None]
        if segment_ids_BT is not None:
            seg_q_BC = jax.lax.dynamic_slice_in_dim(segment_ids_BT, start, q_BCNH.shape[1], axis=1)
            mask_B1CS = mask_B1CS & (seg_q_BC[:, :, None] == segment_ids_BT[:, None, :])[:, None]
        bias = None if alibi_slopes_N is None else alibi_bias(alibi_slopes_N, q_index_C, k_index_S)
        return jax.nn.dot_product_attention(q_BCNH, k_BSKH, v_BSKH, bias=bias, mask=mask_B1CS,
                                            scale=q_BTNH.shape[-1] ** -0.5, implementation=chunk_implementation)

    if chunk == t:
        return attend_chunk(q_BTNH, 0)
    num_chunks = -(-t // chunk)
    pad = num_chunks * chunk - t  # padded queries attend like real ones and are dropped afterwards
    q_BTNH_padded = jnp.pad(q_BTNH, ((0, 0), (0, pad), (0, 0), (0, 0)))
    if segment_ids_BT is not None:
        segment_ids_BT = jnp.pad(segment_ids_BT, ((0, 0), (0, pad)), constant_values=-1)
    b, _, n, h = q_BTNH.shape
    q_CBcNH = q_BTNH_padded.reshape(b, num_chunks, chunk, n, h).swapaxes(0, 1)
    out_CBcNH = jax.lax.map(lambda args: attend_chunk(*args), (q_CBcNH, jnp.arange(num_chunks) * chunk))
    return out_CBcNH.swapaxes(0, 1).reshape(b, num_chunks * chunk, n, h)[:, :t]


def _self_attention(q_BTNH, k_BTKH, v_BTKH, segment_ids_BT, implementation, window, alibi_slopes_N):
    implementation = choose_implementation(implementation, q_BTNH.dtype, q_BTNH.shape[1],
                                           has_bias=alibi_slopes_N is not None, has_mask=segment_ids_BT is not None)
    if implementation == "splash":
        return splash.splash_attention(q_BTNH, k_BTKH, v_BTKH, segment_ids_BT, window)
    mask_B1TS = None
    if segment_ids_BT is not None:
        mask_B1TS = (segment_ids_BT[:, :, None] == segment_ids_BT[:, None, :])[:, None]
    bias = None
    if alibi_slopes_N is not None:
        index_T = jnp.arange(q_BTNH.shape[1])
        bias = alibi_bias(alibi_slopes_N, index_T, index_T)
        if implementation == "cudnn":
            bias = bias.astype(q_BTNH.dtype)
    return jax.nn.dot_product_attention(
        q_BTNH, k_BTKH, v_BTKH, bias=bias, mask=mask_B1TS, is_causal=True, scale=q_BTNH.shape[-1] ** -0.5,
        local_window_size=None if window is None else (window - 1, 0), implementation=implementation,
    )
