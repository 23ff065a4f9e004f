"""The NIAH generator: deterministic for a seed, exact length, needles where asked, answers checkable."""

import numpy as np
import pytest

from drope_jax.data import niah
from drope_jax.data.tokenizer import ByteTokenizer
from drope_jax.errors import ConfigError

TOK = ByteTokenizer()
HAYSTACK = TOK.encode("def f(x):\n    return x + 1\n\nclass A:\n    pass\n" * 40)


def gen(**kw):
    return niah.Generator(TOK, HAYSTACK, **{"template": "ruler", **kw})


@pytest.mark.parametrize("task", niah.TASKS)
def test_same_seed_same_prompts_other_seed_other_prompts(task):
    a, b = gen(seed=3).sample(task, 800, 0.5, index=2), gen(seed=3).sample(task, 800, 0.5, index=2)
    np.testing.assert_array_equal(a.prompt, b.prompt)
    assert a.answers == b.answers
    c = gen(seed=4).sample(task, 800, 0.5, index=2)
    assert c.answers != a.answers
    assert gen(seed=3).sample(task, 800, 0.5, index=3).answers != a.answers


@pytest.mark.parametrize("task", niah.TASKS)
@pytest.mark.parametrize("depth", [0.0, 0.3, 1.0])
def test_prompt_is_exact_length_with_the_needle_at_the_depth_and_the_query_last(task, depth):
    g = gen(seed=1)
    s = g.sample(task, 900, depth, index=0)
    assert s.prompt.shape == (900,) and s.prompt.dtype == np.int32
    text = TOK.decode(s.prompt)
    # the first queried needle holds the first answer and sits where the depth says
    first = TOK.decode(s.prompt[s.needle_starts[0]:s.needle_starts[0] + s.needle_lengths[0]])
    assert first.startswith(" One of the special magic numbers for ") and first.endswith(f"is: {s.answers[0]}.")
    room = 900 - len(TOK.encode(_query(g, s))) - sum(s.needle_lengths)
    before = sum(n for st, n in zip(s.needle_starts[1:], s.needle_lengths[1:]) if st < s.needle_starts[0])
    offset = s.needle_starts[0] - before  # where it went in the haystack: the nearest word boundary
    assert abs(offset - round(depth * room)) <= 3
    start, end = s.needle_starts[0], s.needle_starts[0] + s.needle_lengths[0]
    between_words = TOK.decode(s.prompt[start - 1:start]) in " \n:" or TOK.decode(s.prompt[end:end + 1]).isspace()
    assert offset in (0, room) or between_words
    assert text.endswith("mentioned in the provided text is" if task in ("passkey", "multikey") else
                         "mentioned in the provided text are")
    # every value the query needs is in the prompt, once
    for value in s.answers:
        assert text.count(value) == 1


def _query(g, s):
    """The query text of sample s: what follows the haystack at the end of the prompt."""
    rng = g._rng(s.task, s.length, s.depth, 0)
    return g.needles_and_query(s.task, rng)[1]


def test_tasks_ask_for_what_they_say():
    g = gen(seed=0)
    assert len(g.sample("passkey", 800, 0.5).answers) == 1
    mk = g.sample("multikey", 800, 0.5)
    assert len(mk.answers) == 1 and len(mk.needle_starts) == 4  # three distractor keys
    mv = g.sample("multivalue", 800, 0.5)
    key = TOK.decode(mv.prompt).split("special magic numbers for ")[-1].split(" ")[0]
    assert TOK.decode(mv.prompt).count(f"numbers for {key} is:") == 4 and not mv.ordered
    mq = g.sample("multiquery", 800, 0.5)
    assert len(mq.answers) == 4 and mq.ordered


@pytest.mark.parametrize("needles", [4, 2, 6])
def test_every_multi_needle_task_writes_the_configured_pairs_four_by_default(needles):
    from drope_jax.eval.suite import Settings

    assert Settings(methods=()).niah_needles == 4  # the DroPE paper: four (key, value) pairs in every variant
    g = gen(seed=2) if needles == 4 else gen(seed=2, num_needles=needles)
    for task in ("multikey", "multivalue", "multiquery"):
        s = g.sample(task, 900, 0.5)
        assert len(s.needle_starts) == needles, task
        assert len(s.answers) == (1 if task == "multikey" else needles)
    assert len(g.sample("passkey", 900, 0.5).needle_starts) == 1
    with pytest.raises(ConfigError, match="niah_needles"):
        Settings(methods=(), niah_needles=1)


def test_scoring_is_exact_match():
    g = gen(seed=0)
    pk = g.sample("passkey", 800, 0.5)
    assert niah.score(pk, g.answer_text(pk))
    assert niah.score(pk, f" {pk.answers[0]}. And then more text")
    assert not niah.score(pk, f" {pk.answers[0]}1.")  # a longer number is wrong
    assert not niah.score(pk, " The number is " + pk.answers[0])  # the value must come first
    mv = g.sample("multivalue", 800, 0.5)
    assert niah.score(mv, " " + ", ".join(reversed(mv.answers)))  # any order
    assert not niah.score(mv, " " + ", ".join(mv.answers[:-1]))  # all of them
    mq = g.sample("multiquery", 800, 0.5)
    assert niah.score(mq, g.answer_text(mq))
    assert not niah.score(mq, " " + ", ".join(reversed(mq.answers)))  # in the order asked


def test_short_template_and_word_values():
    g = niah.Generator(TOK, HAYSTACK, template="short", values="word", seed=0)
    s = g.sample("multikey", 96, 0.0)
    text = TOK.decode(s.prompt)
    assert s.needle_starts[0] == 0 and text.startswith(" ") and "=" in text
    assert s.answers[0] in niah.WORDS and text.count(f"={s.answers[0]}.") == 1
    assert niah.pick_template(TOK, 128) == "short" and niah.pick_template(TOK, 2048) == "ruler"


@pytest.mark.parametrize("task", niah.TASKS)
def test_code_template_writes_assignments_and_asks_with_an_assert(task):
    g = niah.Generator(TOK, HAYSTACK, template="code", seed=0)
    s = g.sample(task, 600, 0.5)
    text = TOK.decode(s.prompt)
    query = text[text.rindex("\n    assert "):]
    assert len(s.answers[0]) == 6 and all(f" = {v}\n" in text for v in s.answers)
    for start, size, value in zip(s.needle_starts, s.needle_lengths, s.answers):  # the needles asked about
        needle = TOK.decode(s.prompt[start:start + size])
        assert needle.startswith("\n    magic_") and needle.endswith(f" = {value}\n")
        assert needle.split(" = ")[0].strip() in query
    assert niah.score(s, g.answer_text(s)) and not niah.score(s, " 0" + g.answer_text(s))


def test_too_short_a_prompt_is_refused_by_name():
    with pytest.raises(ConfigError, match="short"):
        gen().sample("multiquery", 100, 0.5)
    with pytest.raises(ConfigError, match="depth"):
        gen().sample("passkey", 800, 1.5)


def test_wilson_interval_on_worked_numbers():
    assert niah.wilson_interval(24, 48) == pytest.approx((0.3639, 0.6361), abs=1e-4)
    lo, hi = niah.wilson_interval(0, 48)
    assert lo == 0.0 and hi == pytest.approx(0.0741, abs=1e-4)  # never the degenerate [0, 0]
    assert niah.wilson_interval(48, 48) == pytest.approx((0.9259, 1.0), abs=1e-4)
