"""Generated retrieval documents mixed into training: needles in real text, a query, and its answer.

A model learns to look a key up only if its data asks it to: a 44M model trained on source code alone
learned to copy but not to retrieve (docs/reproduction.md, round 2). With ``config.data.retrieval_share``
> 0, that share of the rows of every global batch is generated. A generated row holds one or more
documents in the NIAH forms of the evaluation (``drope_jax.data.niah``: passkey, multikey, multivalue,
multiquery), each of a random length up to the row, ending with its correct answer and EOS, so needle
and query lie anywhere from a few tokens to the whole training context apart.

- The haystack is training text (the evaluation's is held out).
- Keys are ``niah.TRAIN_WORDS``, disjoint from the keys an evaluation asks for.
- Row ``index`` of the generated stream is a pure function of (seed, index), so generated rows resume
  exactly, with the rest of the pipeline, from the iterator state in a checkpoint.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from drope_jax.data import niah
from drope_jax.errors import ConfigError

MIN_HAYSTACK = 16  # text tokens a generated document holds at least, beside its needles, query and answer
HAYSTACK_TOKENS = 1 << 20  # training tokens kept in memory to cut haystacks from


def row_indices(global_batch_size: int, share: float) -> tuple[int, ...]:
    """The rows of every global batch that are generated: round(share x batch) of them, spread evenly."""
    if not 0 <= share < 1:
        raise ConfigError(f"config.data.retrieval_share={share} must be in [0, 1)")
    n = round(share * global_batch_size)
    if share > 0 and n == 0:
        raise ConfigError(f"config.data.retrieval_share={share} is less than one row of the global batch of "
                          f"{global_batch_size}; raise it to at least {0.5 / global_batch_size:.3g}")
    return tuple(sorted({i * global_batch_size // n for i in range(n)})) if n else ()


@dataclasses.dataclass
class Document:
    tokens: np.ndarray  # int32: prompt, answer, EOS
    task: str
    answer_start: int  # index of the answer's first token


class Rows:
    """Rows of ``seq_len + 1`` tokens of generated retrieval documents, for the rows ``at`` of every batch."""

    def __init__(self, tokenizer, haystack: np.ndarray, *, seq_len: int, at: tuple[int, ...], template: str,
                 seed: int):
        self.at, self.seed, self.row_len = at, seed, seq_len + 1
        self.eos_id = tokenizer.eos_id
        self.generator = niah.Generator(tokenizer, haystack, template=template, seed=seed, keys=niah.TRAIN_WORDS)
        # The shortest length that holds most documents; a longer one is drawn again (``document``).
        self.min_len = max(self._needs(t, 0, 0.0, i)[1] for t in niah.TASKS for i in range(16))
        if self.min_len > self.row_len:
            raise ConfigError(f"a generated retrieval document in the {template!r} template needs about "
                              f"{self.min_len} tokens, more than a row of config.data.seq_len={seq_len} (+1); set "
                              "config.data.retrieval_template='short' or train on longer sequences")

    def _needs(self, task: str, length: int, depth: float, index: int) -> tuple[int, int]:
        """Tokens of a document's answer, and of its needles, query, answer and EOS with MIN_HAYSTACK of text."""
        g = self.generator
        answer = g.answer_tokens(task, length, depth, index)
        return answer, g.room_needed(task, length, depth, index) + answer + 1 + MIN_HAYSTACK

    def document(self, length: int, rng: np.random.Generator) -> Document:
        """One document of exactly ``length`` tokens: a NIAH prompt, its correct answer and EOS."""
        while True:  # keys and values of other lengths than min_len's: draw until they fit
            task = niah.TASKS[rng.integers(len(niah.TASKS))]
            depth, index = float(rng.random()), int(rng.integers(2**31))
            answer, needs = self._needs(task, length, depth, index)
            if needs <= length:
                break
        g = self.generator
        sample = g.sample(task, length, depth, index, prompt_length=length - answer - 1)
        answer_ids = g.tokenizer.encode(g.answer_text(sample))
        tokens = np.concatenate([sample.prompt, answer_ids, [self.eos_id]]).astype(np.int32)
        return Document(tokens, task, len(sample.prompt))

    def documents(self, index: int) -> list[np.ndarray]:
        """Generated row ``index`` as its pieces: documents of random lengths, then text to fill the row."""
        rng = np.random.default_rng([self.seed, index])
        pieces, left = [], self.row_len
        while left >= self.min_len:
            length = left if left < 2 * self.min_len else int(rng.integers(self.min_len, left + 1))
            pieces.append(self.document(length, rng).tokens)
            left -= length
        if left:
            start = int(rng.integers(len(self.generator.haystack)))
            pieces.append(np.take(self.generator.haystack, np.arange(start, start + left), mode="wrap"))
        return pieces

    def row(self, index: int) -> dict:
        """Generated row ``index`` as Grain packs a corpus row: ``tokens`` int32 [seq_len + 1], its
        ``tokens_segment_ids`` (from 1) and ``tokens_positions`` (from 0 in each document)."""
        pieces = self.documents(index)
        return {"tokens": np.concatenate(pieces).astype(np.int32),
                "tokens_segment_ids": np.concatenate([np.full(len(p), i + 1, np.int32) for i, p in enumerate(pieces)]),
                "tokens_positions": np.concatenate([np.arange(len(p), dtype=np.int32) for p in pieces])}

    def describe(self, global_batch_size: int) -> str:
        return (f"{len(self.at)} of every {global_batch_size} rows ({len(self.at) / global_batch_size:.1%} of the "
                f"tokens) are generated retrieval documents ({self.generator.template.name!r} template, "
                f"{self.min_len} to {self.row_len} tokens each)")


def from_config(data_cfg, corpus, global_batch_size: int) -> Rows | None:
    """The generated rows ``config.data`` asks for, or None (``retrieval_share`` 0)."""
    at = row_indices(global_batch_size, data_cfg.retrieval_share)
    if not at:
        return None
    tokenizer = corpus.tokenizer()
    template = niah.pick_template(tokenizer, data_cfg.seq_len, data_cfg.retrieval_template)
    haystack = corpus.haystack("train", HAYSTACK_TOKENS)
    return Rows(tokenizer, haystack, seq_len=data_cfg.seq_len, at=at, template=template,
                seed=data_cfg.shuffle_seed)
