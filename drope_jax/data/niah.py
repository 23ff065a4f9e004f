"""RULER-style needle-in-a-haystack tasks, built in token space from real held-out text.

A needle is a key -> value pair (a random word -> a random number or word) written into the
haystack with a template. Tasks (RULER's niah_single, niah_multikey, niah_multivalue, niah_multiquery):

- ``passkey``: one needle; the query asks for its value;
- ``multikey``: ``num_needles`` needles with distinct keys; the query asks for one of them;
- ``multivalue``: ``num_needles`` needles with the same key; the query asks for all its values (any order);
- ``multiquery``: ``num_needles`` needles with distinct keys; the query asks for all of them, in order.

``depth`` is where the first queried needle starts, as a fraction of the haystack; the other needles go
at random depths. Like RULER, a needle goes between words: at the word boundary nearest its depth
(within ``SNAP`` tokens). Each prompt is exactly ``length`` tokens and ends with the query, so a model
answers by continuing it; the answer is scored by exact match of the values it names first.
"""

from __future__ import annotations

import dataclasses
import math
import re

import numpy as np

from drope_jax.errors import ConfigError

TASKS = ("passkey", "multikey", "multivalue", "multiquery")
SNAP = 32  # a needle moves at most this many tokens from its depth, to the nearest word boundary
BOUNDARY_ENDS = frozenset(" \t\n.,;:!?")

WORDS = tuple("""
apple badge cabin candle canyon carpet castle cedar cherry cliff clock cloud cobalt comet copper coral cotton crane
crystal dagger daisy delta desert diamond dragon eagle ember falcon feather fern forest fossil garden garnet ginger
glacier granite harbor hazel helmet heron honey island ivory jacket jasmine jungle kettle kitten ladder lagoon lantern
lemon lily lotus magnet maple marble meadow meteor mirror monkey mosaic nectar needle nickel oasis ocean olive onyx
orchid otter palace panther pebble pepper pigeon pillow planet pocket quartz rabbit raven ribbon river rocket saddle
salmon sapphire scarlet shadow silver spider spruce summit sunset tiger timber tomato topaz tulip tunnel turtle
velvet violet walnut willow window winter zebra
""".split())
# The keys of generated training documents (``drope_jax.data.retrieval``): disjoint from WORDS, so that an
# evaluation never asks for a key the model saw in training.
TRAIN_WORDS = tuple("""
acorn almond anchor antler arrow aspen autumn bamboo banner barley basin beacon beetle birch bison blossom bonnet
boulder bramble breeze bridge bronze bucket buffalo butter cactus camel canoe cargo carrot cello chalk chapel cheetah
chimney cinder clover cobra compass cricket cypress dolphin donkey dune elbow fjord fiddle flint forge fountain
gazelle geyser goblet gravel grove hammock hawk hickory hornet iceberg igloo indigo jaguar kayak kernel koala larch
lemur lilac lobster locket mango marsh mammoth mitten moss mustang nutmeg oak orbit owl paddle parrot peach pelican
pine plum poppy prairie puffin quill radish reef rhubarb robin ruby sable sequoia sparrow squid starling thistle
thunder trout tundra umbrella valley vapor vessel walrus wasp wheat wizard yacht yarrow yew
""".split())


@dataclasses.dataclass(frozen=True)
class Template:
    """How needles and queries read. ``noun`` names the values ("number" or "word")."""

    name: str
    needle: str  # {key}, {value}, {noun}
    query_one: str  # {key}, {noun}: asks for one value
    query_all: str  # {key}, {nouns}: asks for every value of one key
    query_many: str  # {keys}, {nouns}: asks for the values of several keys
    join_keys: str = ", "
    key_name: str = "{key}"  # how a key word is written everywhere, e.g. as a variable name
    value_digits: int = 7
    answer: str = " {values}."  # a correct continuation: {values} joined with answer_sep
    answer_sep: str = ", "


TEMPLATES = {
    "ruler": Template(
        "ruler",
        needle=" One of the special magic {nouns} for {key} is: {value}.",
        query_one=" What is the special magic {noun} for {key} mentioned in the provided text? "
                  "The special magic {noun} for {key} mentioned in the provided text is",
        query_all=" What are all the special magic {nouns} for {key} mentioned in the provided text? "
                  "The special magic {nouns} for {key} mentioned in the provided text are",
        query_many=" What are all the special magic {nouns} for {keys} mentioned in the provided text? "
                   "The special magic {nouns} for {keys} mentioned in the provided text are"),
    # For small contexts (a byte-level model of 128 tokens): the same tasks in a few tokens each.
    "short": Template("short", needle=" {key}={value}.", query_one=" {key}=", query_all=" all {key}=",
                      query_many=" {keys}=", join_keys=", ", value_digits=4, answer="{values}.", answer_sep=","),
    # For models trained on source code: a needle is an assignment, a query an assert to complete
    # (multivalue: the key is assigned several times; the query asks for the tuple of its values).
    # Indented, so that a key follows a space in needle and query alike and tokenizes the same in both.
    "code": Template("code", needle="\n    {key} = {value}\n", query_one="\n    assert {key} ==",
                     query_all="\n    assert {key} in (", query_many="\n    assert ( {keys}) == (",
                     key_name="magic_{key}", value_digits=6, answer=" {values}", answer_sep=", "),
}


@dataclasses.dataclass(frozen=True)
class Sample:
    task: str
    length: int  # the cell's length: the prompt plus room for the answer
    depth: float
    prompt: np.ndarray  # int32 [prompt_length], ending with the query
    answers: tuple[str, ...]  # the values to name, in order
    ordered: bool  # whether the order of the answers counts
    needle_starts: tuple[int, ...]  # token index of each needle in the prompt; the first queried one first
    needle_lengths: tuple[int, ...]


def score(sample: Sample, generated_text: str) -> bool:
    """Exact match: the first words or numbers of the continuation are the expected values."""
    found = re.findall(r"[A-Za-z0-9]+", generated_text)[:len(sample.answers)]
    if sample.ordered:
        return found == list(sample.answers)
    return sorted(found) == sorted(sample.answers)


def wilson_interval(successes: float, n: int, z: float = 1.96) -> tuple[float, float]:
    """The 95% Wilson score interval of a success rate: sound at 0 and 1 and for a few dozen trials."""
    if n == 0:
        return 0.0, 1.0
    p = successes / n
    centre, half = p + z * z / (2 * n), z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return max(0.0, (centre - half) / (1 + z * z / n)), min(1.0, (centre + half) / (1 + z * z / n))


class Generator:
    """Deterministic for a seed: ``sample(task, length, depth, index)`` is the same prompt on every call.

    ``haystack_tokens`` is held-out text, already tokenized (any length; it wraps around if too short).
    ``tokenizer`` has ``encode(str) -> int array`` and ``decode(ids) -> str``. Keys (and word values) are
    drawn from ``keys``: WORDS for evaluation, TRAIN_WORDS for generated training documents.
    """

    def __init__(self, tokenizer, haystack_tokens: np.ndarray, *, template: str = "ruler", values: str = "number",
                 value_digits: int | None = None, num_needles: int = 4, seed: int = 0, keys: tuple = WORDS):
        if template not in TEMPLATES:
            raise ConfigError(f"NIAH template {template!r}; choose one of {sorted(TEMPLATES)}")
        if values not in ("number", "word"):
            raise ConfigError(f"NIAH values {values!r}; choose 'number' or 'word'")
        if len(haystack_tokens) == 0:
            raise ConfigError("the NIAH haystack is empty: the held-out split has no tokens")
        self.tokenizer, self.haystack = tokenizer, np.asarray(haystack_tokens, np.int32)
        self.template, self.values, self.num_needles, self.seed = TEMPLATES[template], values, num_needles, seed
        self.keys = keys
        self.value_digits = value_digits or self.template.value_digits
        self._token_text: dict[int, str] = {}

    @property
    def _nouns(self) -> dict:
        return dict(noun=self.values, nouns=self.values + "s")

    def _text(self, token: int) -> str:
        if token not in self._token_text:
            self._token_text[token] = self.tokenizer.decode([token])
        return self._token_text[token]

    def _at_boundary(self, haystack: np.ndarray, i: int) -> bool:
        """Whether index i of the haystack falls between words (or at either end)."""
        if i <= 0 or i >= len(haystack):
            return True
        before, after = self._text(int(haystack[i - 1])), self._text(int(haystack[i]))
        return before[-1:] in BOUNDARY_ENDS or after[:1].isspace()

    def _snap(self, haystack: np.ndarray, i: int) -> int:
        """The word boundary nearest index i (the earlier one on a tie), or i when none is within SNAP."""
        for d in range(SNAP + 1):
            for j in (i - d, i + d):
                if 0 <= j <= len(haystack) and self._at_boundary(haystack, j):
                    return j
        return i

    def _rng(self, task: str, length: int, depth: float, index: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, TASKS.index(task), length, round(depth * 1e6), index])

    def _value(self, rng, taken: set) -> str:
        while True:
            if self.values == "number":
                v = str(rng.integers(10 ** (self.value_digits - 1), 10**self.value_digits))
            else:
                v = str(rng.choice(self.keys))
            if v not in taken:
                taken.add(v)
                return v

    def needles_and_query(self, task: str, rng) -> tuple[list[tuple[str, str]], str, tuple[str, ...], bool]:
        """[(key, value)] (queried first), the query text, the answers and whether their order counts."""
        if task not in TASKS:
            raise ConfigError(f"NIAH task {task!r}; choose from {TASKS}")
        t, n = self.template, 1 if task == "passkey" else self.num_needles
        nouns = self._nouns
        taken: set = set()
        keys = [str(k) for k in rng.choice(self.keys, size=n, replace=False)]
        taken.update(keys)
        keys = [t.key_name.format(key=k) for k in keys]
        if task == "multivalue":
            pairs = [(keys[0], self._value(rng, taken)) for _ in range(n)]
            return pairs, t.query_all.format(key=keys[0], **nouns), tuple(v for _, v in pairs), False
        pairs = [(k, self._value(rng, taken)) for k in keys]
        if task == "multiquery":
            query = t.query_many.format(keys=t.join_keys.join(keys), **nouns)
            return pairs, query, tuple(v for _, v in pairs), True
        return pairs, t.query_one.format(key=keys[0], **nouns), (pairs[0][1],), True

    def sample(self, task: str, length: int, depth: float, index: int = 0, prompt_length: int | None = None) -> Sample:
        """The prompt of one cell: ``prompt_length`` tokens (default: ``length``, which with the task, depth and
        index picks the needles), so that an answer of ``length - prompt_length`` tokens fits in ``length``."""
        if not 0.0 <= depth <= 1.0:
            raise ConfigError(f"NIAH depth {depth} must lie in [0, 1]")
        rng = self._rng(task, length, depth, index)
        pairs, query, answers, ordered = self.needles_and_query(task, rng)
        cell_length, length = length, length if prompt_length is None else prompt_length
        nouns = self._nouns
        needles = [self.tokenizer.encode(self.template.needle.format(key=k, value=v, **nouns)) for k, v in pairs]
        query_ids = self.tokenizer.encode(query)
        room = length - len(query_ids) - sum(map(len, needles))
        if room < 1:
            raise ConfigError(f"a {task} prompt of {length} tokens has no room for a haystack: its needles and "
                              f"query take {length - room}; evaluate longer lengths or use the 'short' template")
        start = int(rng.integers(len(self.haystack)))
        haystack = np.take(self.haystack, np.arange(start, start + room), mode="wrap")
        # Needle i goes before haystack token at[i]; the first queried needle at the requested depth.
        at = [round(depth * room)] + [int(x) for x in rng.integers(0, room + 1, size=len(needles) - 1)]
        at = [self._snap(haystack, i) for i in at]
        order = sorted(range(len(needles)), key=lambda i: (at[i], i))
        pieces, starts, cursor, written = [], [0] * len(needles), 0, 0
        for i in order:
            pieces.append(haystack[cursor:at[i]])
            written += at[i] - cursor
            starts[i], cursor = written, at[i]
            pieces.append(needles[i])
            written += len(needles[i])
        pieces += [haystack[cursor:], query_ids]
        prompt = np.concatenate(pieces).astype(np.int32)
        assert len(prompt) == length, (len(prompt), length)
        return Sample(task, cell_length, depth, prompt, answers, ordered, tuple(starts), tuple(map(len, needles)))

    def answer_text(self, sample: Sample) -> str:
        """A correct continuation, e.g. " 1234567." or " 11, 22, 33.": sets how many tokens to generate."""
        return self._answer(sample.answers)

    def _answer(self, answers: tuple[str, ...]) -> str:
        return self.template.answer.format(values=self.template.answer_sep.join(answers))

    def answer_tokens(self, task: str, length: int, depth: float, index: int = 0) -> int:
        """How many tokens the correct answer of ``sample(task, length, depth, index)`` takes, without the prompt."""
        _, _, answers, _ = self.needles_and_query(task, self._rng(task, length, depth, index))
        return len(self.tokenizer.encode(self._answer(answers)))

    def room_needed(self, task: str, length: int = 0, depth: float = 0.0, index: int = 0) -> int:
        """Tokens the needles and query of ``sample(task, length, depth, index)`` take."""
        pairs, query, _, _ = self.needles_and_query(task, self._rng(task, length, depth, index))
        nouns = self._nouns
        needles = [self.template.needle.format(key=k, value=v, **nouns) for k, v in pairs]
        return len(self.tokenizer.encode(query)) + sum(len(self.tokenizer.encode(n)) for n in needles)


def pick_template(tokenizer, context: int, requested: str = "auto") -> str:
    """``auto``: RULER's wording when its longest task fits in a third of the training context, else ``short``."""
    if requested != "auto":
        return requested
    ruler = Generator(tokenizer, np.zeros(1, np.int32), template="ruler")
    return "ruler" if max(ruler.room_needed(t) for t in TASKS) <= context // 3 else "short"
