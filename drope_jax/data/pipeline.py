"""Training input: ArrayRecord documents -> seeded global shuffle -> packing -> batches, with Grain.

Each record is one tokenized document ending in EOS (no BOS), written by ``launch/prepare_data.py``.
Documents are concatenated and split into rows of ``seq_len + 1`` tokens (inputs and shifted
targets). Row r of every global batch is packed from its own stream, the documents r, r + B,
r + 2B, ... of each epoch's shuffled order (B rows per batch). A process reads only the streams
of its rows, so reads are disjoint, and the global batch is the same whatever the number of
processes. The iterator state is saved with each checkpoint, so a resumed run sees exactly the
batches an uninterrupted one would.
"""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import sys
import sysconfig
import tempfile

import grain
import numpy as np

from drope_jax import paths
from drope_jax.data import prepare, retrieval
from drope_jax.data.tokenizer import ByteTokenizer, HFTokenizer
from drope_jax.errors import ConfigError

SOURCES = ("arrayrecord", "python_stdlib")
HELD_OUT_PARTS = ("report", "tuning")
TUNING_EVERY = 4  # held-out documents 3, 7, 11, ... are the tuning part


class Corpus:
    """A directory written by ``launch/prepare_data.py``."""

    def __init__(self, path):
        self.path = paths.path(path)
        meta_file = self.path / prepare.METADATA
        if not meta_file.is_file():
            raise ConfigError(f"config.data.path={str(path)!r} has no {prepare.METADATA}: it is not a prepared "
                              "dataset, or its preparation did not finish; run launch/prepare_data.py --out=DIR")
        self.metadata = json.loads(meta_file.read_text())
        self._local = None
        self.vocab_size = self.metadata["vocab_size"]
        self.eos_id = self.metadata["eos_id"]
        self.dtype = np.dtype(self.metadata["token_dtype"])

    @property
    def local(self) -> pathlib.Path:
        """The corpus on this host's disk: itself, or for a cloud path a local copy made on first use
        (ArrayRecord reads local files only)."""
        if self._local is None:
            self._local = paths.local_copy(self.path)
        return self._local

    def documents(self, split: str) -> grain.MapDataset:
        """The split's documents as arrays of the stored dtype (uint16 or uint32), in file order."""
        shards = [str(self.local / s) for s in self.metadata["splits"][split]["shards"]]
        if not shards:
            raise ConfigError(f"{self.path} has no {split!r} documents; prepare it with --val_fraction > 0")
        dtype = self.dtype
        return grain.MapDataset.source(grain.sources.ArrayRecordDataSource(shards)).map(
            lambda record: np.frombuffer(record, dtype))

    def tokenizer(self):
        """The tokenizer the corpus was prepared with, to write text (NIAH prompts, retrieval documents) in it."""
        meta = self.metadata
        if meta.get("tokenizer") == "bytes":
            return ByteTokenizer()
        if meta.get("tokenizer_dir"):
            return HFTokenizer(str(self.local / meta["tokenizer_dir"]))
        raise ConfigError(f"{self.path}/metadata.json names no tokenizer to write prompts with; prepare the data "
                          "with launch/prepare_data.py --tokenizer=bytes or a tokenizer.json")

    def held_out(self, part: str = "report"):
        """The held-out ("val") documents of one part, in file order. "tuning" is every ``TUNING_EVERY``-th
        document, kept for fitting evaluation knobs such as the softmax temperature; "report" is the others,
        the text that evaluations score and NIAH haystacks are made of. So a knob is never fitted on the text
        it is scored on. A split of fewer than ``TUNING_EVERY`` documents is all "report"."""
        if part not in HELD_OUT_PARTS:
            raise ValueError(f"held-out part {part!r}: choose one of {HELD_OUT_PARTS}")
        docs = self.documents("val")
        return (docs[i] for i in range(len(docs)) if (i % TUNING_EVERY == TUNING_EVERY - 1) == (part == "tuning"))

    def haystack(self, split: str, max_tokens: int) -> np.ndarray:
        """The split's first documents (for "val", its report part), concatenated without their EOS tokens,
        up to about ``max_tokens``."""
        chunks, have = [], 0
        for doc in self.held_out("report") if split == "val" else self.documents(split):
            doc = np.asarray(doc, np.int32)
            chunks.append(doc[doc != self.eos_id])
            have += len(chunks[-1])
            if have >= max_tokens:
                break
        return np.concatenate(chunks) if chunks else np.zeros(0, np.int32)

    def eval_rows(self, length: int, num_rows: int, part: str = "report") -> tuple[np.ndarray, int]:
        """Up to ``num_rows`` rows of ``length + 1`` tokens from as many documents of the held-out ``part`` as
        possible, each row one document's own text where documents are long enough: first the start of every document
        (shorter ones joined together), then, while rows are missing, the next stretch of each long
        document, and so on. Returns int32 [n, length + 1] and how many documents the rows hold."""
        size = length + 1
        rows, documents, short, long_docs = [], 0, [], []  # short: documents waiting to be joined
        for doc in self.held_out(part):  # the start of every document
            if len(rows) == num_rows:
                break
            if len(doc) >= size:
                rows.append(doc[:size])
                long_docs.append(doc)
                documents += 1
                continue
            short.append(doc)
            if sum(map(len, short)) >= size:
                rows.append(np.concatenate(short)[:size])
                documents += len(short)
                short = []
        stretch = 1
        while len(rows) < num_rows and long_docs:  # then the next stretch of each long document
            long_docs = [doc for doc in long_docs if len(doc) >= (stretch + 1) * size]
            rows += [doc[stretch * size:(stretch + 1) * size] for doc in long_docs[:num_rows - len(rows)]]
            stretch += 1
        if not rows:
            fix = " (or set the temperature by hand: launch/evaluate.py --temperature=C)" if part == "tuning" else ""
            raise ConfigError(f"the held-out split's {part} part (pipeline.Corpus.held_out) of {self.path} is too "
                              f"short for a sequence of {length} tokens; prepare it with a larger --val_fraction"
                              + fix)
        return np.stack(rows).astype(np.int32), documents


def same_text_rows(corpus: Corpus, context: int, multiples, num_rows: int,
                   part: str = "report") -> tuple[dict[int, np.ndarray], int]:
    """Held-out rows at each multiple of ``context``, all cut from the same text: ``num_rows`` rows of the
    longest length (``Corpus.eval_rows`` of the held-out ``part``), each split into pieces of the shorter
    lengths, so that lengths compare context, not text. Returns {multiple: int32 [rows, multiple * context + 1]}
    and the documents."""
    longest = max(multiples) * context
    rows, documents = corpus.eval_rows(longest, num_rows, part)
    cut = {}
    for m in multiples:
        length = m * context
        pieces = [rows[:, j:j + length + 1] for j in range(0, longest, length)]
        cut[m] = np.stack(pieces, axis=1).reshape(-1, length + 1)  # each row's pieces in order
    return cut, documents


def open_corpus(data_cfg) -> Corpus:
    if data_cfg.source == "python_stdlib":
        return Corpus(python_stdlib_corpus(data_cfg.val_fraction))
    if data_cfg.source == "arrayrecord":
        if not data_cfg.path:
            raise ConfigError("config.data.path is empty: prepare a dataset with launch/prepare_data.py --out=DIR "
                              "and pass --config.data.path=DIR")
        return Corpus(data_cfg.path)
    raise ConfigError(f"config.data.source={data_cfg.source!r}; choose one of {SOURCES}")


def python_stdlib_corpus(val_fraction: float) -> pathlib.Path:
    """The standard library's top-level .py files as a byte-level corpus, prepared once into a cache."""
    cache_root = paths.cache_root()
    target = cache_root / f"python{sys.version_info.major}.{sys.version_info.minor}_stdlib_bytes_val{val_fraction}"
    if (target / prepare.METADATA).is_file():
        return target
    cache_root.mkdir(parents=True, exist_ok=True)
    building = pathlib.Path(tempfile.mkdtemp(dir=cache_root, prefix=".building-"))
    stdlib = sysconfig.get_paths()["stdlib"]
    prepare.prepare(os.path.join(stdlib, "*.py"), "text", "bytes", str(building), val_fraction=val_fraction,
                    progress=lambda _: None)
    try:
        os.rename(building, target)  # atomic: a concurrent builder that lost the race just discards its copy
    except OSError:
        shutil.rmtree(building, ignore_errors=True)
    return target


def document_stream(documents: grain.MapDataset, *, seed: int, stream_index: int = 0,
                    num_streams: int = 1) -> grain.MapDataset:
    """One stream's documents: every ``num_streams``-th of each epoch's shuffled order; infinite."""
    return documents.shuffle(seed=seed)[stream_index::num_streams].repeat(None)


def train_dataset(documents: grain.MapDataset, *, seq_len: int, global_batch_size: int, seed: int,
                  process_index: int = 0, process_count: int = 1, document_masking: bool = False,
                  generated: retrieval.Rows | None = None) -> grain.IterDataset:
    """This process's rows of each global batch, ``{"tokens": int32 [global_batch_size // process_count,
    seq_len + 1]}``; with ``document_masking`` also ``segment_ids`` and per-document ``positions``.

    Process p holds rows [p * n, (p + 1) * n) of the global batch (n rows per process), the rows its
    devices hold under ``sharding.host_batch_to_global``. Rows ``generated.at`` of every batch are
    generated retrieval documents; the corpus's documents are dealt to the other rows.
    """
    if global_batch_size % process_count:
        raise ConfigError(f"config.train.global_batch_size ({global_batch_size}) must be divisible by the "
                          f"{process_count} processes")
    rows = global_batch_size // process_count
    keys = {"tokens": "tokens", "segment_ids": "tokens_segment_ids", "positions": "tokens_positions"}
    if not document_masking:
        keys = {"tokens": "tokens"}
    generated_at = generated.at if generated else ()
    corpus_rows = [r for r in range(global_batch_size) if r not in generated_at]
    if len(documents) < len(corpus_rows):  # a row would have no document to read
        raise ConfigError(f"the training split has {len(documents)} documents, fewer than the {len(corpus_rows)} "
                          "rows of a global batch that read it; use a smaller config.train.global_batch_size or "
                          "prepare the data in more documents")

    def corpus_stream(row: int) -> grain.IterDataset:
        ds = document_stream(documents, seed=seed, stream_index=corpus_rows.index(row), num_streams=len(corpus_rows))
        # Reads in the calling thread: a read-ahead pool per row stream costs more than the reads.
        ds = ds.map(lambda doc: {"tokens": doc}).to_iter_dataset(grain.ReadOptions(num_threads=0))
        return grain.experimental.ConcatThenSplitIterDataset(ds, length_struct={"tokens": seq_len + 1})

    def generated_stream(row: int) -> grain.IterDataset:
        slot = generated_at.index(row)  # the generated stream's rows interleave: row i of slot s is i * n + s
        return grain.MapDataset.range(2**48).map(
            lambda i: generated.row(i * len(generated_at) + slot)).to_iter_dataset(
            grain.ReadOptions(num_threads=0))

    streams = [generated_stream(r) if r in generated_at else corpus_stream(r)
               for r in range(process_index * rows, (process_index + 1) * rows)]
    return _JsonStateSafe(grain.experimental.ZipIterDataset(streams).map(
        lambda packed: {k: np.stack([p[src] for p in packed]).astype(np.int32) for k, src in keys.items()}))


class _JsonStateSafe(grain.IterDataset):
    """Its iterator accepts a state that went through JSON, as every checkpointed state does.

    Grain's packing marks "no remainder" with the tuple (-1, -1); JSON turns it into a list, which
    ``set_state`` then takes for a remainder, and the resumed stream skips ahead.
    """

    def __iter__(self):
        return _JsonStateSafeIterator(self._parent.__iter__())


class _JsonStateSafeIterator(grain.DatasetIterator):
    def __next__(self):
        return next(self._parent)

    def get_state(self):
        return self._parent.get_state()

    def set_state(self, state):
        self._parent.set_state(_slices_as_tuples(state))


def _slices_as_tuples(state):
    if isinstance(state, dict):
        return {k: ({f: tuple(sl) for f, sl in v.items()} if k == "remainder_slices" else _slices_as_tuples(v))
                for k, v in state.items()}
    if isinstance(state, list):
        return [_slices_as_tuples(v) for v in state]
    return state
