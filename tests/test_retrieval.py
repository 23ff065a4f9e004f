"""Generated retrieval documents in the training mix: where they go, what they hold, and exact resume."""

import json
import re

import numpy as np
import pytest

from drope_jax import run_config
from drope_jax.data import niah, pipeline, retrieval
from drope_jax.data.tokenizer import ByteTokenizer, HFTokenizer
from drope_jax.errors import ConfigError

from test_data import numbered_documents, take

TOK = ByteTokenizer()
HAYSTACK = TOK.encode("def f(x):\n    return x + 1\n\nclass A:\n    pass\n" * 40)
SCIENCE_TOKENIZER = "experiments/drope_small/tokenizer"  # the BPE of docs/reproduction.md


def rows(seq_len=255, at=(1,), template="short", seed=0):
    return retrieval.Rows(TOK, HAYSTACK, seq_len=seq_len, at=at, template=template, seed=seed)


def test_the_share_is_whole_rows_spread_over_the_batch():
    assert retrieval.row_indices(32, 0.0) == ()
    assert retrieval.row_indices(32, 0.1) == (0, 10, 21)
    assert retrieval.row_indices(8, 0.5) == (0, 2, 4, 6)
    with pytest.raises(ConfigError, match="at least 0.0156"):
        retrieval.row_indices(32, 0.01)
    with pytest.raises(ConfigError, match=r"\[0, 1\)"):
        retrieval.row_indices(32, 1.0)


def test_a_row_is_documents_that_each_end_with_their_answer_and_eos():
    maker = rows()
    row = maker.row(7)
    tokens, segments, positions = row["tokens"], row["tokens_segment_ids"], row["tokens_positions"]
    assert tokens.shape == segments.shape == positions.shape == (256,)
    np.testing.assert_array_equal(maker.row(7)["tokens"], tokens)  # a pure function of the index
    assert not np.array_equal(maker.row(8)["tokens"], tokens)
    pieces = maker.documents(7)
    assert np.all(positions[segments == 1] == np.arange(len(pieces[0])))
    documents = [p for p in pieces if p[-1] == TOK.eos_id]
    assert documents and sum(map(len, pieces)) == 256
    for doc in documents:
        text = TOK.decode(doc[:-1])
        query, answer = text.rsplit("=", 1)  # the query's "=" is the last one before the answer
        assigned = dict(re.findall(r" ([a-z]+)=(\d+)\.", query))
        assert assigned and set(assigned) <= set(niah.TRAIN_WORDS)  # never a key the evaluation asks for
        values = answer.rstrip(".").split(",")
        assert all(v in (assigned.values()) for v in values), text


def test_every_task_appears_and_lengths_span_the_row():
    maker = rows(seq_len=511)
    rng = np.random.default_rng(0)
    docs = [maker.document(int(rng.integers(maker.min_len, 512)), rng) for _ in range(80)]
    assert {d.task for d in docs} == set(niah.TASKS)
    for d in docs:
        assert d.tokens[-1] == TOK.eos_id and d.answer_start < len(d.tokens) - 1
    all_lengths = [len(p) for i in range(40) for p in maker.documents(i)[:1]]
    assert min(all_lengths) < 200 and max(all_lengths) > 400  # near and far needles alike


def test_too_short_a_row_names_the_fix():
    with pytest.raises(ConfigError, match="retrieval_template='short'"):
        rows(seq_len=127, template="ruler")


def test_generated_rows_take_their_places_and_the_corpus_fills_the_rest():
    docs = numbered_documents(n=41)
    maker = rows(seq_len=255, at=(1, 3))
    ds = pipeline.train_dataset(docs, seq_len=255, global_batch_size=4, seed=2, generated=maker)
    batch = next(iter(ds))["tokens"]
    np.testing.assert_array_equal(batch[1], maker.row(0)["tokens"])
    np.testing.assert_array_equal(batch[3], maker.row(1)["tokens"])
    plain = next(iter(pipeline.train_dataset(docs, seq_len=255, global_batch_size=2, seed=2)))["tokens"]
    np.testing.assert_array_equal(batch[[0, 2]], plain)  # the corpus is dealt to the other rows as to a batch of 2


def test_a_mixed_stream_resumes_exactly_and_splits_over_processes():
    docs, maker = numbered_documents(n=41), rows(seq_len=127, at=(0, 2))
    kw = dict(seq_len=127, global_batch_size=4, seed=2, generated=maker)
    straight = take(iter(pipeline.train_dataset(docs, **kw)), 6)
    first = iter(pipeline.train_dataset(docs, **kw))
    take(first, 3)
    resumed = iter(pipeline.train_dataset(docs, **kw))
    resumed.set_state(json.loads(json.dumps(first.get_state())))
    for got, want in zip(take(resumed, 3), straight[3:]):
        np.testing.assert_array_equal(got, want)
    halves = [take(iter(pipeline.train_dataset(docs, **kw, process_index=p, process_count=2)), 6) for p in range(2)]
    for step in range(6):
        np.testing.assert_array_equal(np.concatenate([halves[0][step], halves[1][step]]), straight[step])


def test_document_masking_marks_each_generated_document():
    maker = rows(seq_len=255, at=(0,))
    batch = next(iter(pipeline.train_dataset(numbered_documents(), seq_len=255, global_batch_size=2, seed=0,
                                         document_masking=True, generated=maker)))
    seg, tok = batch["segment_ids"][0], batch["tokens"][0]
    ends = np.flatnonzero(np.diff(seg)) + 1  # each document's EOS is the last token of its segment
    assert len(ends) >= 1 and np.all(tok[ends - 1] == TOK.eos_id)


def test_the_config_is_checked_before_anything_runs():
    c = run_config.default_config()
    c.train.total_steps = 10
    c.data.retrieval_template = "prose"
    with pytest.raises(ConfigError, match="retrieval_template"):
        run_config.make_plan(c)
    c.data.update(retrieval_template="auto", retrieval_share=0.001)
    with pytest.raises(ConfigError, match="retrieval_share"):
        run_config.make_plan(c)


@pytest.mark.parametrize("template", sorted(niah.TEMPLATES))
def test_a_key_tokenizes_the_same_in_needle_and_query(template):
    tok, t = HFTokenizer(SCIENCE_TOKENIZER), niah.TEMPLATES[template]
    keys = [t.key_name.format(key=k) for k in ("river", "cobalt")]
    needle = tok.encode(t.needle.format(key=keys[0], value="123456", nouns="numbers")).tolist()
    queries = [t.query_one.format(key=keys[0], noun="number"), t.query_all.format(key=keys[0], nouns="numbers"),
               t.query_many.format(keys=t.join_keys.join(keys), nouns="numbers")]

    def holds(ids, sub):
        return any(ids[i:i + len(sub)] == sub for i in range(len(ids)))

    for key in keys:
        key_ids = tok.encode(" " + key).tolist()  # the key after a space, as every template writes it
        assert holds(tok.encode(t.needle.format(key=key, value="1", nouns="numbers")).tolist(), key_ids)
        assert holds(tok.encode(queries[2]).tolist(), key_ids)
    assert all(holds(tok.encode(q).tolist(), tok.encode(" " + keys[0]).tolist()) for q in queries[:2])
    assert holds(needle, tok.encode(" " + keys[0]).tolist())
