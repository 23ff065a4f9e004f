"""Training input: a Grain pipeline of documents -> seeded global shuffle -> packing -> batches.

Each element of the source is one tokenized document ending in EOS (no BOS). Documents are
concatenated and split into rows of ``seq_len + 1`` tokens (inputs and shifted targets). Each
process reads a disjoint slice of every epoch's shuffled order, and the iterator state is saved
with each checkpoint, so a resumed run sees exactly the batches an uninterrupted one would.
"""

from __future__ import annotations

import pathlib
import sysconfig
import zlib

import grain
import numpy as np

from drope_jax.model_config import ConfigError

BYTE_EOS = 256
BYTE_VOCAB = 257


def encode_bytes(text: bytes) -> np.ndarray:
    return np.concatenate([np.frombuffer(text, np.uint8).astype(np.int32), [BYTE_EOS]]).astype(np.int32)


def python_stdlib_documents(val_fraction: float) -> dict[str, list[np.ndarray]]:
    """The standard library's top-level .py files as byte-token documents, split by a hash of the name."""
    root = pathlib.Path(sysconfig.get_paths()["stdlib"])
    files = sorted(root.glob("*.py"))
    if not files:
        raise ConfigError(f"no .py files under {root}; set config.data.source to another corpus")
    splits: dict[str, list[np.ndarray]] = {"train": [], "val": []}
    for f in files:
        held_out = zlib.crc32(f.name.encode()) % 1000 < val_fraction * 1000
        splits["val" if held_out else "train"].append(encode_bytes(f.read_bytes()))
    return splits


def load_documents(data_cfg) -> dict[str, list[np.ndarray]]:
    if data_cfg.source == "python_stdlib":
        return python_stdlib_documents(data_cfg.val_fraction)
    raise ConfigError(f"config.data.source={data_cfg.source!r} is not known; use 'python_stdlib'")


def train_dataset(documents, *, seq_len: int, batch_per_process: int, seed: int,
                  process_index: int = 0, process_count: int = 1) -> grain.IterDataset:
    """Batches of ``{"tokens": int32 [batch_per_process, seq_len + 1]}``, infinite, reshuffled each epoch."""
    ds = grain.MapDataset.source(documents).shuffle(seed=seed)
    ds = ds[process_index::process_count].repeat(None)
    ds = ds.map(lambda doc: {"tokens": np.asarray(doc, np.int32)}).to_iter_dataset()
    ds = grain.experimental.ConcatThenSplitIterDataset(ds, length_struct={"tokens": seq_len + 1})
    ds = ds.map(lambda ex: {"tokens": ex["tokens"]})
    return ds.batch(batch_per_process, drop_remainder=True)


def eval_sequences(documents, length: int, num_sequences: int) -> np.ndarray:
    """``num_sequences`` rows of ``length + 1`` tokens from held-out documents concatenated in order."""
    stream = np.concatenate(documents)
    available = len(stream) // (length + 1)
    if available == 0:
        raise ConfigError(f"the held-out split has {len(stream)} tokens, too few for one sequence of {length}")
    n = min(num_sequences, available)
    return stream[: n * (length + 1)].reshape(n, length + 1)
