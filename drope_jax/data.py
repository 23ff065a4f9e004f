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

from drope_jax import prepare
from drope_jax.model_config import ConfigError

SOURCES = ("arrayrecord", "python_stdlib")


class Corpus:
    """A directory written by ``launch/prepare_data.py``."""

    def __init__(self, path):
        self.path = pathlib.Path(path)
        meta_file = self.path / prepare.METADATA
        if not meta_file.is_file():
            raise ConfigError(f"config.data.path={str(path)!r} has no {prepare.METADATA}: it is not a prepared "
                              "dataset, or its preparation did not finish; run launch/prepare_data.py --out=DIR")
        self.metadata = json.loads(meta_file.read_text())
        self.vocab_size = self.metadata["vocab_size"]
        self.eos_id = self.metadata["eos_id"]
        self.dtype = np.dtype(self.metadata["token_dtype"])

    def documents(self, split: str) -> grain.MapDataset:
        """The split's documents as arrays of the stored dtype (uint16 or uint32), in file order."""
        shards = [str(self.path / s) for s in self.metadata["splits"][split]["shards"]]
        if not shards:
            raise ConfigError(f"{self.path} has no {split!r} documents; prepare it with --val_fraction > 0")
        dtype = self.dtype
        return grain.MapDataset.source(grain.sources.ArrayRecordDataSource(shards)).map(
            lambda record: np.frombuffer(record, dtype))

    def eval_sequences(self, length: int, num_sequences: int) -> np.ndarray:
        """``num_sequences`` rows of ``length + 1`` tokens: held-out documents concatenated in order."""
        needed, chunks, have = num_sequences * (length + 1), [], 0
        for doc in self.documents("val"):
            chunks.append(doc)
            have += len(doc)
            if have >= needed:
                break
        n = min(num_sequences, have // (length + 1))
        if n == 0:
            raise ConfigError(f"the held-out split of {self.path} has {have} tokens, too few for a sequence of "
                              f"{length}; prepare it with a larger --val_fraction")
        return np.concatenate(chunks)[: n * (length + 1)].reshape(n, length + 1).astype(np.int32)


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
    cache_root = pathlib.Path(os.environ.get("XDG_CACHE_HOME", pathlib.Path.home() / ".cache")) / "drope_jax"
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
                  process_index: int = 0, process_count: int = 1,
                  document_masking: bool = False) -> grain.IterDataset:
    """This process's rows of each global batch, ``{"tokens": int32 [global_batch_size // process_count,
    seq_len + 1]}``; with ``document_masking`` also ``segment_ids`` and per-document ``positions``.

    Process p holds rows [p * n, (p + 1) * n) of the global batch (n rows per process), the rows its
    devices hold under ``sharding.host_batch_to_global``.
    """
    if global_batch_size % process_count:
        raise ConfigError(f"config.train.global_batch_size ({global_batch_size}) must be divisible by the "
                          f"{process_count} processes")
    rows = global_batch_size // process_count
    keys = {"tokens": "tokens", "segment_ids": "tokens_segment_ids", "positions": "tokens_positions"}
    if not document_masking:
        keys = {"tokens": "tokens"}

    def row_stream(row: int) -> grain.IterDataset:
        ds = document_stream(documents, seed=seed, stream_index=row, num_streams=global_batch_size)
        # Reads in the calling thread: a read-ahead pool per row stream costs more than the reads.
        ds = ds.map(lambda doc: {"tokens": doc}).to_iter_dataset(grain.ReadOptions(num_threads=0))
        return grain.experimental.ConcatThenSplitIterDataset(ds, length_struct={"tokens": seq_len + 1})

    streams = [row_stream(r) for r in range(process_index * rows, (process_index + 1) * rows)]
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
