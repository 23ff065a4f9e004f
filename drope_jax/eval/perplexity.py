"""Perplexity of a model at lengths beyond its training context, overall and by position."""

from __future__ import annotations

import concurrent.futures
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils

from drope_jax import sharding
from drope_jax.data import pipeline
from drope_jax.model.loss import token_nll
from drope_jax.model.positions import PosEncoding, as_data
from drope_jax.model.state import ModelSpec, apply


@functools.partial(jax.jit, static_argnames=("spec", "pos", "use_qk_norm", "query_chunk"))
def _nll(params, tokens_BT1, pos_table, *, spec: ModelSpec, pos: PosEncoding, use_qk_norm: bool,
         query_chunk: int | None):
    logits_BTV = apply(spec, params, tokens_BT1[:, :-1], pos, use_qk_norm=use_qk_norm, query_chunk=query_chunk,
                       pos_table=pos_table)
    return token_nll(logits_BTV, tokens_BT1[:, 1:], spec.cfg.loss_backend)


def full_batches(rows_N: np.ndarray, batch_size: int):
    """Batches of exactly ``batch_size`` rows, the last padded with copies of the last row, so one compiled
    program serves them all; yields (batch, real rows in it)."""
    for i in range(0, len(rows_N), batch_size):
        batch = rows_N[i:i + batch_size]
        real = len(batch)
        yield np.concatenate([batch, np.repeat(batch[-1:], batch_size - real, axis=0)]), real


def over_batches(fn, rows_N: np.ndarray, batch_size: int) -> list:
    """``fn(batch, real rows in it)`` for each of ``full_batches``, in order. In a single CPU process two
    batches run at once: XLA leaves one of two cores idle on these small ops (1.3x faster here). Elsewhere
    one at a time, so device memory holds one batch and every process issues collectives in one order."""
    batches = list(full_batches(rows_N, batch_size))
    if jax.default_backend() != "cpu" or jax.process_count() > 1 or len(batches) == 1:
        return [fn(*b) for b in batches]
    first = fn(*batches[0])  # alone: the program compiles once, not once per thread
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        return [first, *pool.map(lambda b: fn(*b), batches[1:])]


def place(batch: np.ndarray, mesh=None):
    """A host batch (the same on every process) on the devices: split by rows over ``mesh`` (data parallel),
    else on the default device."""
    if mesh is None or mesh.size == 1:
        return jnp.asarray(batch)
    return jax.make_array_from_callback(batch.shape, sharding.batch_sharding(mesh, batch.ndim), lambda i: batch[i])


def to_host(x) -> np.ndarray:
    """A device array as NumPy on every process, gathered from the others' devices when it spans processes."""
    return np.asarray(x if x.is_fully_addressable else multihost_utils.process_allgather(x, tiled=True))


def row_nll(spec: ModelSpec, params, sequences_NT1: np.ndarray, pos: PosEncoding, *, use_qk_norm: bool = True,
            batch_size: int = 4, query_chunk: int | None = None, mesh=None) -> np.ndarray:
    """Next-token NLL [N, T] of each row of ``sequences_NT1`` (rows of T + 1 tokens): entry t scores token t + 1.
    ``query_chunk`` bounds attention memory for long rows (see attention.py); with ``mesh`` each batch is
    split over its devices (``batch_size`` a multiple of their number). RoPE scalings share one program."""
    pos, pos_table = as_data(pos, spec.cfg.dim_per_head, spec.cfg.rope_theta)

    def nll(batch, real):
        return to_host(_nll(params, place(batch, mesh), pos_table, spec=spec, pos=pos, use_qk_norm=use_qk_norm,
                            query_chunk=query_chunk)).astype(np.float64)[:real]

    return np.concatenate(over_batches(nll, sequences_NT1, batch_size))


def position_nll(spec: ModelSpec, params, sequences_NT1: np.ndarray, pos: PosEncoding, *, use_qk_norm: bool = True,
                 batch_size: int = 4, query_chunk: int | None = None, mesh=None) -> np.ndarray:
    """Mean next-token NLL at each position [T] over the rows of ``sequences_NT1``."""
    return row_nll(spec, params, sequences_NT1, pos, use_qk_norm=use_qk_norm, batch_size=batch_size,
                   query_chunk=query_chunk, mesh=mesh).mean(axis=0)


def perplexity(spec: ModelSpec, params, sequences_NT1: np.ndarray, pos: PosEncoding, *,
               use_qk_norm: bool = True, batch_size: int = 4, query_chunk: int | None = None) -> float:
    """exp(mean next-token NLL) over every position of every sequence."""
    nll_T = position_nll(spec, params, sequences_NT1, pos, use_qk_norm=use_qk_norm, batch_size=batch_size,
                         query_chunk=query_chunk)
    return math.exp(float(np.mean(nll_T)))


def batch_rows(rows_at_longest: int, lengths, devices: int = 1) -> dict[int, int]:
    """Rows per forward at each length: ``rows_at_longest`` at the longest, and as many tokens per forward at
    the shorter ones, so short lengths fill the devices too; each a multiple of ``devices`` (rows split over them)."""
    longest = max(lengths)
    return {m: -(-rows_at_longest * longest // m // devices) * devices for m in lengths}


def bucket_means(nll_T: np.ndarray, width: int) -> list[float]:
    """Mean NLL over consecutive position buckets [0, width), [width, 2 width), ..."""
    return [float(np.mean(nll_T[i:i + width])) for i in range(0, len(nll_T), width)]


class InTrainingEval:
    """Held-out perplexity at each of config.eval.lengths every config.eval.every_steps steps, in the
    encoding of the phase being trained, as one metrics record: the flip shows on the curve."""

    def __init__(self, config, plan, spec: ModelSpec, corpus):
        self.config, self.plan, self.spec = config, plan, spec
        self.every = config.eval.every_steps or 0
        self.sequences = pipeline.same_text_rows(corpus, config.data.seq_len, config.eval.lengths,
                                                 config.eval.num_sequences)[0] if self.every else {}
        self.rows_per_batch = batch_rows(config.eval.batch_size, config.eval.lengths)

    def due(self, step: int) -> bool:
        return self.every > 0 and step % self.every == 0

    def __call__(self, params, step: int, phase: str) -> dict:
        record = {"step": step, "phase": phase}
        for m, seqs in self.sequences.items():
            record[f"eval/ppl_{m}x"] = perplexity(self.spec, params, seqs, self.plan.phase_pos(phase),
                                                  use_qk_norm=self.plan.uses_qk_norm(phase),
                                                  batch_size=self.rows_per_batch[m])
        return record
