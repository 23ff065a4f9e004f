"""Greedy decoding with a KV cache: one prefill over the prompt, then one token per step.

The cache holds every layer's keys and values, ``{"k": [L, B, S, K, H], "v": ..., "length": int32}``,
and works for every position encoding: RoPE (scaled or not) rotates each key once, at its own
position, when it is written; ALiBi and sliding windows are masks over cache indices; NoPE needs
nothing. Rows of a batch share one prompt length.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from drope_jax.model.config import ModelConfig
from drope_jax.model.loss import token_nll
from drope_jax.model.positions import PosEncoding, as_data
from drope_jax.model.state import ModelSpec, apply


def init_cache(cfg: ModelConfig, batch: int, max_len: int) -> dict:
    shape = (cfg.num_layers, batch, max_len, cfg.num_kv_heads, cfg.dim_per_head)
    dt = jnp.dtype(cfg.compute_dtype)
    # length 0 as a Python int: the first call is known, while tracing, to be a prefill (see model.py)
    return {"k": jnp.zeros(shape, dt), "v": jnp.zeros(shape, dt), "length": 0}


def greedy_generate(params, prompt_BP, *, spec: ModelSpec, pos: PosEncoding, max_new_tokens: int,
                    use_qk_norm: bool = True, query_chunk: int | None = None, return_logits: bool = False,
                    teacher_BA=None):
    """The ``max_new_tokens`` [B, M] most likely continuations, one token at a time; with
    ``return_logits`` also the logits [B, M, V] each token was chosen from.

    ``teacher_BA`` (A = M - 1 tokens, e.g. the correct answers, padded): the prefill also reads them after
    the prompt, and the call returns ``(tokens, nll_BA)``, the next-token NLL of each teacher token given
    the prompt and the teacher tokens before it. Decoding then starts from the prompt alone: the teacher's
    keys beyond the current position are masked, and overwritten as tokens are generated. RoPE scalings
    share one compiled program (``positions.as_data``)."""
    pos, pos_table = as_data(pos, spec.cfg.dim_per_head, spec.cfg.rope_theta)
    return _generate(params, prompt_BP, pos_table, teacher_BA, spec=spec, pos=pos, max_new_tokens=max_new_tokens,
                     use_qk_norm=use_qk_norm, query_chunk=query_chunk, return_logits=return_logits)


@functools.partial(jax.jit, static_argnames=("spec", "pos", "max_new_tokens", "use_qk_norm", "query_chunk",
                                             "return_logits"))
def _generate(params, prompt_BP, pos_table, teacher_BA, *, spec, pos, max_new_tokens, use_qk_norm, query_chunk,
              return_logits):
    b, p = prompt_BP.shape
    cache = init_cache(spec.cfg, b, p + max_new_tokens - 1)
    run = functools.partial(apply, spec, params, pos=pos, use_qk_norm=use_qk_norm, query_chunk=query_chunk,
                            pos_table=pos_table)
    if teacher_BA is None:
        logits_BPV, cache = run(prompt_BP, cache=cache)
        first_logits_BV = logits_BPV[:, -1].astype(jnp.float32)
    else:
        logits_BTV, cache = run(jnp.concatenate([prompt_BP, teacher_BA], axis=1), cache=cache)
        nll_BA = token_nll(logits_BTV[:, p - 1:-1], teacher_BA, spec.cfg.loss_backend)
        first_logits_BV = logits_BTV[:, p - 1].astype(jnp.float32)
    cache = dict(cache, length=jnp.int32(p))  # decoding continues from the prompt (teacher keys get overwritten)

    def step(carry, _):
        logits_BV, cache = carry
        token_B = jnp.argmax(logits_BV, axis=-1).astype(jnp.int32)
        next_logits_B1V, cache = run(token_B[:, None], cache=cache)
        return (next_logits_B1V[:, 0].astype(jnp.float32), cache), (token_B, logits_BV)

    (last_logits_BV, _), (tokens_MB, logits_MBV) = jax.lax.scan(step, (first_logits_BV, cache), None,
                                                                 length=max_new_tokens - 1)
    tokens_BM = jnp.concatenate([tokens_MB.T, jnp.argmax(last_logits_BV, -1).astype(jnp.int32)[:, None]], axis=1)
    if teacher_BA is not None:
        return tokens_BM, nll_BA
    if not return_logits:
        return tokens_BM
    return tokens_BM, jnp.concatenate([logits_MBV.swapaxes(0, 1), last_logits_BV[:, None]], axis=1)
