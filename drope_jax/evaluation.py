"""Perplexity of a model at lengths beyond its training context."""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

from drope_jax.positions import PosEncoding
from drope_jax.state import ModelSpec, apply, token_nll


@functools.partial(jax.jit, static_argnames=("spec", "pos", "use_qk_norm"))
def _nll_sum(params, tokens_BT1, *, spec: ModelSpec, pos: PosEncoding, use_qk_norm: bool):
    logits_BTV = apply(spec, params, tokens_BT1[:, :-1], pos, use_qk_norm=use_qk_norm)
    return jnp.sum(token_nll(logits_BTV, tokens_BT1[:, 1:]))


def perplexity(spec: ModelSpec, params, sequences_NT1: np.ndarray, pos: PosEncoding, *,
               use_qk_norm: bool = True, batch_size: int = 4) -> float:
    """exp(mean next-token NLL) over every position of every sequence."""
    total = 0.0
    for i in range(0, len(sequences_NT1), batch_size):
        chunk = jnp.asarray(sequences_NT1[i:i + batch_size])
        total += float(_nll_sum(params, chunk, spec=spec, pos=pos, use_qk_norm=use_qk_norm))
    return math.exp(total / (sequences_NT1.shape[0] * (sequences_NT1.shape[1] - 1)))
