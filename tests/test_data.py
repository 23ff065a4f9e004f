"""The input pipeline: preparation, exact resume, per-process sharding, packing and bad input."""

import json

import grain
import numpy as np
import pytest

from drope_jax.data import pipeline, prepare
from drope_jax.data.tokenizer import ByteTokenizer
from drope_jax.errors import ConfigError
from drope_jax.train import loop

from test_train import tiny_config


def numbered_documents(n=23, seed=0):
    """Documents whose tokens are globally unique, so every token can be traced to one place."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(3, 40, size=n)
    start = np.concatenate([[0], np.cumsum(lengths)])
    return grain.MapDataset.source([np.arange(start[i], start[i + 1], dtype=np.int32) for i in range(n)])


def take(iterator, n):
    return [next(iterator)["tokens"].copy() for _ in range(n)]


@pytest.mark.parametrize("interrupt_at", [1, 4, 9])  # 9 batches span more than one epoch of these documents
def test_resumed_stream_equals_uninterrupted_stream(interrupt_at):
    ds = pipeline.train_dataset(numbered_documents(), seq_len=15, global_batch_size=4, seed=3)
    straight = take(iter(ds), 14)
    first = iter(ds)
    take(first, interrupt_at)
    state = json.loads(json.dumps(first.get_state()))  # as it travels through a checkpoint
    resumed = iter(ds)
    resumed.set_state(state)
    for i, batch in enumerate(take(resumed, 14 - interrupt_at)):
        np.testing.assert_array_equal(batch, straight[interrupt_at + i])
    total = sum(len(d) for d in numbered_documents())
    assert 14 * 4 * 16 > total  # the stream really crossed an epoch boundary


def test_each_epoch_is_reshuffled():
    docs = numbered_documents()
    stream = pipeline.document_stream(docs, seed=1)
    epoch1 = [int(stream[i][0]) for i in range(len(docs))]
    epoch2 = [int(stream[len(docs) + i][0]) for i in range(len(docs))]
    assert sorted(epoch1) == sorted(epoch2) and epoch1 != epoch2


def test_row_streams_read_disjoint_parts_that_cover_the_dataset_once_per_epoch():
    docs = numbered_documents(n=23)
    per_process = len(docs) // 2 + 1
    seen = []
    for p in range(2):
        stream = pipeline.document_stream(docs, seed=5, stream_index=p, num_streams=2)
        epoch_len = len(range(p, len(docs), 2))
        seen.extend(int(stream[i][0]) for i in range(epoch_len))
        assert epoch_len <= per_process
    assert sorted(seen) == sorted(int(d[0]) for d in docs)


def test_processes_read_disjoint_rows_of_the_same_global_batches():
    docs = numbered_documents(n=41)
    one = iter(pipeline.train_dataset(docs, seq_len=7, global_batch_size=4, seed=2))
    two = [iter(pipeline.train_dataset(docs, seq_len=7, global_batch_size=4, seed=2, process_index=p, process_count=2))
           for p in range(2)]
    for _ in range(12):  # several epochs of every row stream
        local = [next(it)["tokens"] for it in two]
        np.testing.assert_array_equal(np.concatenate(local), next(one)["tokens"])
        assert not set(local[0].ravel().tolist()) & set(local[1].ravel().tolist())


def test_packing_loses_only_the_remainder():
    docs = numbered_documents(n=20)
    seq_len = 15
    total = sum(len(d) for d in docs)
    rows = take(iter(pipeline.train_dataset(docs, seq_len=seq_len, global_batch_size=1, seed=0)),
                total // (seq_len + 1) + 2)
    rows = [r.ravel() for r in rows]
    tokens = np.concatenate(rows)
    first_epoch = tokens[tokens < total]
    first_rows = total // (seq_len + 1)
    within = np.concatenate(rows[:first_rows])
    assert len(np.unique(within)) == len(within)  # nothing repeated within an epoch
    assert set(within.tolist()) <= set(range(total))
    assert total - len(within) <= seq_len  # only the remainder is not in a full row of the first epoch
    assert len(np.unique(first_epoch)) == total  # and the remainder appears at the start of the next row


def test_document_masking_yields_segments_and_positions():
    ds = pipeline.train_dataset(numbered_documents(), seq_len=31, global_batch_size=2, seed=0, document_masking=True)
    batch = next(iter(ds))
    assert set(batch) == {"tokens", "segment_ids", "positions"}
    seg, pos, tok = batch["segment_ids"][0], batch["positions"][0], batch["tokens"][0]
    starts = np.flatnonzero(np.diff(seg)) + 1
    assert np.all(pos[starts] == 0) and np.all(np.diff(tok)[np.diff(seg) == 0] == 1)


def write(path, text: bytes):
    path.write_bytes(text)
    return path


def test_prepare_writes_documents_with_eos_and_metadata(tmp_path):
    for i in range(5):
        write(tmp_path / f"doc{i}.txt", f"document {i} ".encode() * (i + 1))
    meta = prepare.prepare(str(tmp_path / "*.txt"), "text", "bytes", str(tmp_path / "out"), val_fraction=0.3,
                           progress=lambda _: None)
    corpus = pipeline.Corpus(tmp_path / "out")
    docs = [d for split in ("train", "val") if meta["splits"][split]["shards"] for d in corpus.documents(split)]
    assert len(docs) == 5 and meta["splits"]["val"]["documents"] >= 1
    assert all(d[-1] == ByteTokenizer.eos_id and ByteTokenizer.eos_id not in d[:-1] for d in docs)
    texts = sorted(bytes(d[:-1].astype(np.uint8)).decode() for d in docs)
    assert texts == sorted(f"document {i} " * (i + 1) for i in range(5))
    assert meta["splits"]["train"]["tokens"] + meta["splits"]["val"]["tokens"] == sum(len(d) for d in docs)
    assert (meta["vocab_size"], meta["eos_id"], meta["token_dtype"], meta["bos_id"]) == (257, 256, "uint16", None)
    # A rerun gives the same result, and leaves no temporary file listed.
    again = prepare.prepare(str(tmp_path / "*.txt"), "text", "bytes", str(tmp_path / "out"), val_fraction=0.3,
                            progress=lambda _: None)
    assert again["splits"] == meta["splits"]
    assert not list((tmp_path / "out").glob("*.tmp"))


def test_jsonl_lines_without_the_text_field_are_skipped_and_counted(tmp_path):
    lines = [{"text": "alpha"}, {"body": "no text here"}, {"text": "beta"}, {"text": 7}]
    write(tmp_path / "a.jsonl", "\n".join(json.dumps(x) for x in lines).encode())
    meta = prepare.prepare(str(tmp_path / "*.jsonl"), "jsonl", "bytes", str(tmp_path / "out"), val_fraction=0.0,
                           progress=lambda _: None)
    assert meta["skipped_documents"] == 2
    assert meta["splits"]["train"]["documents"] == 2


def test_records_sharing_a_split_field_land_in_one_split(tmp_path):
    # 40 directories of 5 pieces each: with split_field every directory is held out or trained whole
    lines = [{"text": f"piece {i} of dir {d}", "dir": f"d{d}"} for d in range(40) for i in range(5)]
    write(tmp_path / "a.jsonl", "\n".join(json.dumps(x) for x in lines).encode())
    keys = [key for key, _ in prepare.iter_documents(str(tmp_path / "a.jsonl"), "jsonl", "text", "dir")]
    assert keys[:6] == ["dir:d0"] * 5 + ["dir:d1"]
    meta = prepare.prepare(str(tmp_path / "*.jsonl"), "jsonl", "bytes", str(tmp_path / "out"), val_fraction=0.3,
                           split_field="dir", progress=lambda _: None)
    assert meta["splits"]["val"]["documents"] % 5 == 0 and 0 < meta["splits"]["val"]["documents"] < 200
    assert meta["source"]["split_field"] == "dir"


@pytest.mark.parametrize("make, fmt, message", [
    (lambda d: None, "text", "matches no files"),
    (lambda d: write(d / "bad.txt", b"caf\xe9 latin-1"), "text", "bad.txt is not UTF-8"),
    (lambda d: write(d / "bad.txt", b'{"text": "ok"}\n{broken'), "jsonl", "bad.txt:2 is not valid JSON"),
])
def test_bad_input_is_named(tmp_path, make, fmt, message):
    make(tmp_path)
    with pytest.raises(ConfigError, match=message):
        prepare.prepare(str(tmp_path / "*.txt"), fmt, "bytes", str(tmp_path / "out"), progress=lambda _: None)
    assert not (tmp_path / "out" / prepare.METADATA).exists()


def test_a_directory_without_metadata_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="has no metadata.json"):
        pipeline.Corpus(tmp_path)


def test_a_dataset_with_a_larger_vocab_than_the_model_is_refused(tmp_path):
    write(tmp_path / "a.txt", b"hello world " * 100)
    prepare.prepare(str(tmp_path / "a.txt"), "text", "bytes", str(tmp_path / "out"), val_fraction=0.0,
                    progress=lambda _: None)
    c = tiny_config(model=dict(vocab_size=200), data=dict(source="arrayrecord", path=str(tmp_path / "out")))
    with pytest.raises(ConfigError, match="vocab of 257, larger than config.model.vocab_size"):
        loop.run(c, tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_a_local_bpe_tokenizer_works_end_to_end(tmp_path):
    """Train a BPE tokenizer offline, prepare data with it, train and evaluate on it."""
    import tokenizers
    from tokenizers import decoders, models, pre_tokenizers, trainers

    words = np.random.default_rng(0).choice(["alpha", "beta", "gamma", "delta", "tau", "pi"], size=(60, 80))
    for i, row in enumerate(words):
        write(tmp_path / f"doc{i}.txt", " ".join(row).encode())
    tok = tokenizers.Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train([str(tmp_path / f"doc{i}.txt") for i in range(60)],
              trainers.BpeTrainer(vocab_size=300, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tok.save(str(tmp_path / "tokenizer.json"))

    meta = prepare.prepare(str(tmp_path / "doc*.txt"), "text", str(tmp_path / "tokenizer.json"),
                           str(tmp_path / "data"), val_fraction=0.2, progress=lambda _: None)
    assert meta["eos_id"] == tok.token_to_id("<|endoftext|>") and meta["vocab_size"] == tok.get_vocab_size()
    assert (tmp_path / "data" / "tokenizer" / "tokenizer.json").is_file()
    c = tiny_config(model=dict(vocab_size=320), data=dict(source="arrayrecord", path=str(tmp_path / "data"),
                                                          seq_len=16),
                    train=dict(total_steps=10), drope=dict(flip_step=6))
    result = loop.run(c, tmp_path / "run")
    assert all(np.isfinite(v) for r in result["perplexity"].values() for v in r.values())


def test_parquet_rows_are_documents(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"text": ["first row", None, "second row"], "id": [1, 2, 3]}), tmp_path / "a.parquet")
    meta = prepare.prepare(str(tmp_path / "a.parquet"), "parquet", "bytes", str(tmp_path / "out"), val_fraction=0.0,
                           progress=lambda _: None)
    docs = list(pipeline.Corpus(tmp_path / "out").documents("train"))
    assert sorted(bytes(d[:-1].astype(np.uint8)).decode() for d in docs) == ["first row", "second row"]
    assert meta["skipped_documents"] == 1
    with pytest.raises(ConfigError, match="has no column 'body'"):
        prepare.prepare(str(tmp_path / "a.parquet"), "parquet", "bytes", str(tmp_path / "out2"), text_field="body",
                        progress=lambda _: None)


class _HeldOut(pipeline.Corpus):
    def __init__(self, lengths):
        self.path, self.eos_id = "held_out", -1
        self.docs = [np.arange(100 * i, 100 * i + n, dtype=np.int32) for i, n in enumerate(lengths)]

    def documents(self, split):
        return grain.MapDataset.source(self.docs)


def test_held_out_rows_start_documents_first_then_take_further_stretches_of_long_ones():
    rows, documents = _HeldOut([5, 3, 30, 40, 9, 70]).eval_rows(9, 6)  # document 3 is the tuning part's
    starts = [int(r[0]) for r in rows]
    assert starts == [200, 0, 500, 210, 510, 220]  # the long documents' starts, the short ones joined, then more
    np.testing.assert_array_equal(rows[1], [0, 1, 2, 3, 4, 100, 101, 102, 400, 401])
    assert documents == 5 and all(np.all(np.diff(r) == 1) for i, r in enumerate(rows) if i != 1)
    with pytest.raises(ConfigError, match="val_fraction"):
        _HeldOut([3, 4]).eval_rows(9, 2)


def test_the_tuning_part_is_every_fourth_held_out_document_and_nothing_else_reads_it():
    corpus = _HeldOut([20] * 10)
    first = {part: [int(d[0]) // 100 for d in corpus.held_out(part)] for part in pipeline.HELD_OUT_PARTS}
    assert first == {"report": [0, 1, 2, 4, 5, 6, 8, 9], "tuning": [3, 7]}
    report_rows, _ = corpus.eval_rows(9, 100)
    tuning_rows, documents = corpus.eval_rows(9, 100, part="tuning")
    assert {int(r[0]) // 100 for r in report_rows} == set(first["report"])
    assert {int(r[0]) // 100 for r in tuning_rows} == {3, 7} and documents == 2
    assert not {int(t) // 100 for t in corpus.haystack("val", 10_000)} & {3, 7}
    assert [len(list(_HeldOut([20] * 3).held_out(part))) for part in pipeline.HELD_OUT_PARTS] == [3, 0]


def test_shorter_lengths_cut_the_same_text_as_the_longest():
    rows, documents = pipeline.same_text_rows(_HeldOut([40, 50, 45]), 4, (1, 2, 8), num_rows=3)
    assert rows[8].shape == (3, 33) and rows[1].shape == (24, 5) and documents == 3
    for m in (1, 2):  # every target token of the longest rows, in order, and nothing else
        targets = rows[m][:, 1:].reshape(3, -1)
        np.testing.assert_array_equal(targets, rows[8][:, 1:])


def test_the_data_part_imports_nothing_of_model_train_or_eval():
    import subprocess
    import sys

    code = ("import json, sys, drope_jax.data.pipeline, drope_jax.data.prepare, drope_jax.data.retrieval; "
            "print(json.dumps(sorted(m for m in sys.modules if m.startswith('drope_jax.'))))")
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert json.loads(loaded) == ["drope_jax.data", "drope_jax.data.niah", "drope_jax.data.pipeline",
                                  "drope_jax.data.prepare", "drope_jax.data.retrieval", "drope_jax.data.tokenizer",
                                  "drope_jax.errors", "drope_jax.paths"]
