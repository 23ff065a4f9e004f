"""Throughput of the training input pipeline over pre-tokenized ArrayRecord shards.

  python bench/data_pipeline.py [--data=DIR] [--seq_len=1024] [--batch=32]

Without --data it writes a synthetic corpus first: 60M tokens of uint16 documents whose lengths
follow a log-normal with a median of ~700 tokens (web-text-like), through the same shard writer
as launch/prepare_data.py. Reports the median tokens/s over windows after a warm-up.
"""

import argparse
import json
import pathlib
import statistics
import tempfile
import time

import numpy as np

from drope_jax.data import pipeline, prepare


def synthetic_corpus(out: pathlib.Path, total_tokens: int, vocab: int = 49152) -> pathlib.Path:
    rng = np.random.default_rng(0)
    lengths = np.clip(rng.lognormal(mean=6.5, sigma=1.0, size=total_tokens // 700), 16, 32768).astype(int)
    shards, written = [], 0
    for i, chunk in enumerate(np.array_split(lengths, 8)):
        records = [rng.integers(0, vocab, n, dtype=np.uint16).tobytes() for n in chunk]
        prepare.write_shard(out / f"train-{i:05d}.array_record", records)
        shards.append(f"train-{i:05d}.array_record")
        written += int(chunk.sum())
    meta = {"format": "drope_jax.tokenized.v1", "tokenizer": "synthetic", "vocab_size": vocab, "eos_id": 0,
            "bos_id": None, "token_dtype": "uint16", "splits": {"train": {"documents": len(lengths),
            "tokens": written, "shards": shards}, "val": {"documents": 0, "tokens": 0, "shards": []}}}
    (out / prepare.METADATA).write_text(json.dumps(meta))
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="")
    parser.add_argument("--seq_len", type=int, default=1024)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--windows", type=int, default=10)
    parser.add_argument("--batches_per_window", type=int, default=50)
    args = parser.parse_args()

    tmp = None
    if not args.data:
        tmp = tempfile.TemporaryDirectory()
        print("writing a synthetic 60M-token corpus ...", flush=True)
        args.data = str(synthetic_corpus(pathlib.Path(tmp.name), 60_000_000))
    corpus = pipeline.Corpus(args.data)
    ds = pipeline.train_dataset(corpus.documents("train"), seq_len=args.seq_len, global_batch_size=args.batch, seed=0)
    it = iter(ds)
    for _ in range(args.batches_per_window):  # warm-up
        next(it)
    rates = []
    for _ in range(args.windows):
        start = time.perf_counter()
        for _ in range(args.batches_per_window):
            batch = next(it)
        rates.append(args.batches_per_window * batch["tokens"].size / (time.perf_counter() - start))
    print(f"input pipeline, batch {args.batch} x {args.seq_len + 1} tokens, {args.windows} windows of "
          f"{args.batches_per_window} batches: median {statistics.median(rates) / 1e6:.2f}M tokens/s "
          f"(min {min(rates) / 1e6:.2f}M, max {max(rates) / 1e6:.2f}M)")


if __name__ == "__main__":
    main()
