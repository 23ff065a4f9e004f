"""Tokenize a corpus once into ArrayRecord shards: one document per record, EOS appended, no BOS.

Output in ``out``: ``{train,val}-NNNNN.array_record`` (one pair per group of input files,
written in parallel) and ``metadata.json`` (tokenizer, vocab size, EOS id, token dtype, counts and the
shard list). Every file is written under a temporary name and renamed when complete, and
``metadata.json`` comes last, so an interrupted run leaves nothing that reads as whole and a
rerun simply redoes the work.
"""

from __future__ import annotations

import datetime
import glob as globlib
import json
import multiprocessing
import os
import pathlib
import shutil
import time
import zlib

import numpy as np

from drope_jax import paths
from drope_jax.data.tokenizer import load_tokenizer, token_dtype
from drope_jax.errors import ConfigError

FORMATS = ("text", "jsonl", "parquet")
METADATA = "metadata.json"
SHARD_BYTES = 256 * 2**20  # input bytes per shard, at most, for large corpora
SHARD_OPTIONS = "group_size:1"  # one record per chunk: cheap random access for the global shuffle
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.json", "merges.txt")


def is_val(doc_key: str, val_fraction: float) -> bool:
    """A stable, order-independent split: the same document lands in the same split on every rerun."""
    return zlib.crc32(doc_key.encode()) % 1_000_000 < val_fraction * 1_000_000


def iter_documents(path: str, fmt: str, text_field: str, split_field: str = ""):
    """Yields (key, text); the key decides the split. JSONL lines without the text field are skipped and counted
    (key None). With ``split_field``, a JSONL record's value of that field is its key, so records that share it
    (the pieces of one directory, say) land in the same split."""
    name = os.path.basename(path)
    if fmt == "text":
        yield name, _read_utf8(path)
    elif fmt == "jsonl":
        for line_no, line in enumerate(_read_utf8(path).splitlines(), 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise ConfigError(f"{path}:{line_no} is not valid JSON ({e.msg}); fix or remove the line") from None
            text = record.get(text_field) if isinstance(record, dict) else None
            group = record.get(split_field) if split_field and isinstance(record, dict) else None
            key = f"{split_field}:{group}" if group is not None else f"{name}:{line_no}"
            yield (key, text) if isinstance(text, str) else (None, None)
    elif fmt == "parquet":
        try:
            import pyarrow.parquet as pq
        except ImportError:
            raise ConfigError("--format=parquet needs pyarrow: pip install -e '.[parquet]'") from None
        table = pq.read_table(path)
        if text_field not in table.column_names:
            raise ConfigError(f"{path} has no column {text_field!r} (columns: {table.column_names}); "
                              "set --text_field")
        for row, text in enumerate(table.column(text_field).to_pylist()):
            yield (f"{name}:{row}", text) if isinstance(text, str) else (None, None)
    else:
        raise ConfigError(f"--format={fmt!r}; choose one of {FORMATS}")


def _read_utf8(path: str) -> str:
    try:
        return pathlib.Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path} is not UTF-8 text (byte {e.start}); convert it or leave it out of --input") from None


def write_shard(path: pathlib.Path, records: list[bytes]) -> None:
    """One ArrayRecord shard of ``records``, written under a temporary name and renamed when complete."""
    from array_record.python.array_record_module import ArrayRecordWriter

    tmp = path.with_name(path.name + ".tmp")
    writer = ArrayRecordWriter(str(tmp), SHARD_OPTIONS)
    for r in records:
        writer.write(r)
    writer.close()
    os.replace(tmp, path)


_worker_tokenizer = None


def _init_worker(tokenizer_spec: str, eos_token: str | None) -> None:
    global _worker_tokenizer
    _worker_tokenizer = load_tokenizer(tokenizer_spec, eos_token)


def _prepare_shard(job) -> dict:
    """Tokenizes a group of input files into one train and one val shard."""
    index, paths, fmt, text_field, out, val_fraction, split_field = job
    tok = _worker_tokenizer
    dtype = token_dtype(tok.vocab_size)
    records = {"train": [], "val": []}
    stats = {"train": {"documents": 0, "tokens": 0}, "val": {"documents": 0, "tokens": 0}, "skipped": 0}
    for key, text in (doc for path in paths for doc in iter_documents(path, fmt, text_field, split_field)):
        if key is None:
            stats["skipped"] += 1
            continue
        ids = np.append(tok.encode(text), tok.eos_id).astype(dtype)
        split = "val" if is_val(key, val_fraction) else "train"
        records[split].append(ids.tobytes())
        stats[split]["documents"] += 1
        stats[split]["tokens"] += len(ids)
    stats["shards"] = {}
    for split, recs in records.items():
        if recs:
            name = f"{split}-{index:05d}.array_record"
            write_shard(pathlib.Path(out) / name, recs)
            stats["shards"][split] = name
    return stats


def _total_bytes(files) -> int:
    return sum(os.path.getsize(f) for f in files)


def _group_by_size(files: list[str], num_groups: int) -> list[list[str]]:
    """Consecutive files in ``num_groups`` groups of roughly equal bytes."""
    target = _total_bytes(files) / max(num_groups, 1)
    groups, current, size = [], [], 0
    for f in files:
        current.append(f)
        size += os.path.getsize(f)
        if size >= target and len(groups) < num_groups - 1:
            groups.append(current)
            current, size = [], 0
    return groups + ([current] if current else [])


def prepare(input_glob: str, fmt: str, tokenizer: str, out: str, *, val_fraction: float = 0.01,
            text_field: str = "text", num_workers: int | None = None, eos_token: str | None = None,
            split_field: str = "", progress=print) -> dict:
    """Tokenizes every file matching ``input_glob`` into ``out``; returns the metadata it wrote. Either may be
    a cloud path (gs://): inputs are fetched to a local copy first, and the output is written locally and
    uploaded, metadata.json last, so a dataset without it is incomplete wherever it lies."""
    if fmt not in FORMATS:
        raise ConfigError(f"--format={fmt!r}; choose one of {FORMATS}")
    if paths.is_cloud(out):
        staging = paths.local_dir("prepare", out)
        shutil.rmtree(staging, ignore_errors=True)
        (paths.path(out) / METADATA).unlink(missing_ok=True)
        metadata = prepare(input_glob, fmt, tokenizer, str(staging), val_fraction=val_fraction, text_field=text_field,
                           num_workers=num_workers, eos_token=eos_token, split_field=split_field, progress=progress)
        files = sorted(f for f in staging.rglob("*") if f.is_file() and f.name != METADATA)
        for f in [*files, staging / METADATA]:
            paths.copy_file(f, paths.path(out) / str(f.relative_to(staging)))
        progress(f"uploaded {len(files) + 1} files to {out}")
        return metadata
    if paths.is_cloud(input_glob):
        local = paths.local_dir("prepare-input", input_glob)
        shutil.rmtree(local, ignore_errors=True)
        # A numbered folder each: names may recur across folders, and documents keep the keys (file
        # names) that decide their split, so gs:// input splits as a local copy of it does.
        for i, f in enumerate(paths.cloud_glob(input_glob)):
            paths.copy_file(f, local / f"{i:05d}" / f.name)
        input_glob = str(local / "*" / "*")
    files = sorted(f for f in globlib.glob(input_glob, recursive=True) if os.path.isfile(f))
    if not files:
        raise ConfigError(f"--input={input_glob!r} matches no files")
    if not 0 <= val_fraction < 1:
        raise ConfigError(f"--val_fraction={val_fraction} must be in [0, 1)")
    tok = load_tokenizer(tokenizer, eos_token)  # fails here, before any worker starts, on a bad tokenizer
    out_dir = pathlib.Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / METADATA).unlink(missing_ok=True)  # the directory reads as incomplete until we finish

    workers = max(1, min(num_workers or os.cpu_count() or 1, len(files)))
    groups = _group_by_size(files, min(len(files), max(16 * workers, _total_bytes(files) // SHARD_BYTES)))
    jobs = [(i, group, fmt, text_field, str(out_dir), val_fraction, split_field) for i, group in enumerate(groups)]
    totals = {"train": {"documents": 0, "tokens": 0, "shards": []}, "val": {"documents": 0, "tokens": 0, "shards": []}}
    skipped, start, last_report = 0, time.time(), 0.0
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(workers, initializer=_init_worker, initargs=(tokenizer, eos_token)) as pool:
        for done, stats in enumerate(pool.imap_unordered(_prepare_shard, jobs), 1):
            for split in ("train", "val"):
                totals[split]["documents"] += stats[split]["documents"]
                totals[split]["tokens"] += stats[split]["tokens"]
                if split in stats["shards"]:
                    totals[split]["shards"].append(stats["shards"][split])
            skipped += stats["skipped"]
            docs = totals["train"]["documents"] + totals["val"]["documents"]
            tokens = totals["train"]["tokens"] + totals["val"]["tokens"]
            elapsed = max(time.time() - start, 1e-9)
            if time.time() - last_report > 1 or done == len(jobs):
                last_report = time.time()
                progress(f"shards {done}/{len(jobs)} | {docs:,} docs | {tokens:,} tokens | "
                         f"{docs / elapsed:,.0f} docs/s | {tokens / elapsed / 1e6:,.2f}M tokens/s")
    for split in totals:
        totals[split]["shards"].sort()
    if not totals["train"]["documents"]:
        raise ConfigError(f"--input={input_glob!r} gave no training documents (skipped {skipped})")

    metadata = {
        "format": "drope_jax.tokenized.v1",
        "tokenizer": tok.name, "vocab_size": tok.vocab_size, "eos_id": tok.eos_id, "bos_id": None,
        "token_dtype": token_dtype(tok.vocab_size).name,
        "splits": totals, "skipped_documents": skipped,
        "source": {"input": input_glob, "format": fmt, "text_field": text_field, "val_fraction": val_fraction,
                   "split_field": split_field},
        "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    }
    if hasattr(tok, "source_dir"):  # keep the tokenizer beside the data, for export and evaluation
        (out_dir / "tokenizer").mkdir(exist_ok=True)
        for name in TOKENIZER_FILES:
            if (tok.source_dir / name).is_file():
                shutil.copy(tok.source_dir / name, out_dir / "tokenizer" / name)
        metadata["tokenizer_dir"] = "tokenizer"
    tmp = out_dir / (METADATA + ".tmp")
    tmp.write_text(json.dumps(metadata, indent=1))
    os.replace(tmp, out_dir / METADATA)
    if skipped:
        progress(f"skipped {skipped:,} records without a {text_field!r} text field (counted in metadata.json)")
    return metadata
