"""Long-context evaluation of a run: every method at every length multiple, held-out perplexity (overall
and by position) and the NIAH suite, answered by greedy decoding with a KV cache.

``launch/evaluate.py`` parses flags into ``Settings`` and calls ``evaluate``; ``eval_report`` writes
the JSON, the markdown table and the plots.
"""

from __future__ import annotations

import dataclasses
import datetime
import math
import time

import jax
import numpy as np
from tqdm import tqdm

from drope_jax import data, decode, evaluation, niah
from drope_jax.eval_methods import Run, method_pos, method_weights
from drope_jax.model_config import ConfigError
from drope_jax.tokenizer import ByteTokenizer, HFTokenizer

PPL_TASK, NIAH_TASK = "ppl", "niah"


@dataclasses.dataclass(frozen=True)
class Settings:
    methods: tuple[tuple[str, str | None], ...]  # (name, other workdir or None)
    lengths: tuple[int, ...] = (1, 2, 4, 8)  # multiples of the training context
    tasks: tuple[str, ...] = (PPL_TASK, NIAH_TASK)
    niah_tasks: tuple[str, ...] = niah.TASKS
    depths: tuple[float, ...] = (0.0, 0.25, 0.5, 0.75, 1.0)
    niah_samples: int = 8  # prompts per task x length x depth
    ppl_sequences: int = 16  # rows at the longest length; shorter lengths cover the same text in more rows
    batch_size: int = 4
    query_chunk: int = 1024  # attention queries per chunk: memory is linear in length (0: whole sequences)
    template: str = "auto"  # NIAH wording: "ruler", "short", "code", or auto (ruler or short) by the context
    values: str = "number"
    seed: int = 0

    def __post_init__(self):
        unknown = set(self.tasks) - {PPL_TASK, NIAH_TASK} or set(self.niah_tasks) - set(niah.TASKS)
        if unknown:
            raise ConfigError(f"unknown tasks {sorted(unknown)}: --tasks takes {PPL_TASK},{NIAH_TASK}; "
                              f"--niah_tasks takes {','.join(niah.TASKS)}")
        if not self.lengths or min(self.lengths) < 1:
            raise ConfigError(f"--lengths={self.lengths}: give multiples of the training context, >= 1")


def open_tokenizer(corpus: data.Corpus):
    meta = corpus.metadata
    if meta.get("tokenizer") == "bytes":
        return ByteTokenizer()
    if meta.get("tokenizer_dir"):
        return HFTokenizer(str(corpus.path / meta["tokenizer_dir"]))
    raise ConfigError(f"{corpus.path}/metadata.json names no tokenizer the NIAH prompts can use; prepare the data "
                      "with launch/prepare_data.py --tokenizer=bytes or a tokenizer.json")


def held_out_tokens(corpus: data.Corpus, max_tokens: int) -> np.ndarray:
    """The held-out documents, concatenated without their EOS tokens: the NIAH haystack."""
    chunks, have = [], 0
    for doc in corpus.documents("val"):
        doc = np.asarray(doc, np.int32)
        chunks.append(doc[doc != corpus.eos_id])
        have += len(chunks[-1])
        if have >= max_tokens:
            break
    return np.concatenate(chunks) if chunks else np.zeros(0, np.int32)


class _Progress:
    def __init__(self, total: int):
        self.bar = tqdm(total=total, unit="cell", dynamic_ncols=True, mininterval=1.0)

    def step(self, what: str) -> None:
        self.bar.set_description(what, refresh=False)
        self.bar.update(1)


def evaluate(run: Run, settings: Settings, log=print) -> dict:
    corpus = data.open_corpus(run.config.data)
    context = run.context
    chunk = settings.query_chunk or None
    runs = {None: run}
    for _, where in settings.methods:
        if where is not None and where not in runs:
            runs[where] = Run(where, log=log)
            if runs[where].context != context:
                raise ConfigError(f"{where} was trained at context {runs[where].context}, {run.workdir} at {context}; "
                                  "compare runs of one training context")
    # every method's encodings first: a method the run cannot supply is refused before any work
    encodings = {(name, where): {m: method_pos(name, runs[where], float(m)) for m in settings.lengths}
                 for name, where in settings.methods}
    generator = None
    if NIAH_TASK in settings.tasks:
        tokenizer = open_tokenizer(corpus)
        template = niah.pick_template(tokenizer, context, settings.template)
        haystack = held_out_tokens(corpus, 4 * context * max(settings.lengths))
        generator = niah.Generator(tokenizer, haystack, template=template, values=settings.values, seed=settings.seed)
        shortest, needs = min(settings.lengths) * context, max(generator.room_needed(t) for t in settings.niah_tasks)
        if needs >= shortest:
            raise ConfigError(f"NIAH template {template!r} needs {needs} tokens for needles and queries, more than "
                              f"the shortest prompt ({shortest} tokens); use --template=short or longer --lengths")
        log(f"NIAH: template {template!r}, {settings.niah_samples} prompts per task x length x depth, "
            f"{len(haystack):,} held-out haystack tokens")

    results = {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "device": f"{jax.devices()[0].device_kind} ({jax.default_backend()}, {jax.device_count()} devices)",
        "run": {"workdir": str(run.workdir), "init_from": run.init_from, "step": run.final_step,
                "flip_step": run.flip_step, "trained_positions": run.trained_pos.describe(), "context": context},
        "settings": {**dataclasses.asdict(settings), "template": generator.template.name if generator else None},
        "lengths": {str(m): m * context for m in settings.lengths},
        "methods": {}, "ppl": {}, "loss_by_position": {}, "niah": {}, "niah_answer_nll": {}, "niah_examples": {},
    }
    per_method = (len(settings.lengths) * (PPL_TASK in settings.tasks)
                  + len(settings.lengths) * len(settings.niah_tasks) * len(settings.depths) * (generator is not None))
    progress = _Progress(per_method * len(settings.methods))
    start = time.time()
    for name, where in settings.methods:
        label = name if where is None else f"{name}@{where}"
        source = runs[where]
        weights = source.weights(method_weights(name))
        method_encodings = encodings[(name, where)]
        results["methods"][label] = {"weights": weights.source, "phase": weights.phase,
                                     "encoding": {str(m): p.describe() for m, p in method_encodings.items()}}
        if weights.phase == "rope" and name.startswith("drope"):
            log(f"note: {label} drops RoPE from weights trained with it ({weights.source}), with no recalibration")
        if PPL_TASK in settings.tasks:
            _perplexity(results, label, source, weights, method_encodings, corpus, settings, chunk, progress)
        if generator is not None:
            _needles(results, label, source, weights, method_encodings, generator, settings, chunk, progress)
    progress.bar.close()
    results["seconds"] = round(time.time() - start, 1)
    return results


def _perplexity(results, label, source, weights, encodings, corpus, settings, chunk, progress):
    ppl, by_position = {}, {}
    width = max(source.context // 2, 1)
    longest = max(encodings)
    for m, pos in encodings.items():
        # The same held-out text at every length: ppl_sequences rows of the longest, cut into shorter rows.
        sequences = corpus.eval_sequences(m * source.context, settings.ppl_sequences * longest // m)
        nll_T = evaluation.position_nll(source.spec, weights.params, sequences, pos, use_qk_norm=weights.use_qk_norm,
                                        batch_size=settings.batch_size, query_chunk=chunk)
        ppl[str(m)] = math.exp(float(np.mean(nll_T)))
        by_position[str(m)] = {"bucket_tokens": width, "nll": evaluation.bucket_means(nll_T, width),
                               "sequences": int(len(sequences))}
        progress.step(f"{label} ppl {m}x")
    results["ppl"][label] = ppl
    results["loss_by_position"][label] = by_position


def _needles(results, label, source, weights, encodings, generator, settings, chunk, progress):
    accuracy, answer_nll, examples = {}, {}, {}
    forward = dict(use_qk_norm=weights.use_qk_norm, query_chunk=chunk)
    for task in settings.niah_tasks:
        accuracy[task], answer_nll[task], examples[task] = {}, {}, {}
        for m, pos in encodings.items():
            accuracy[task][str(m)], answer_nll[task][str(m)] = {}, {}
            for depth in settings.depths:
                samples = [generator.sample(task, m * source.context, depth, i) for i in range(settings.niah_samples)]
                texts = generate_answers(source.spec, weights.params, pos, generator, samples, settings.batch_size,
                                         **forward)
                accuracy[task][str(m)][f"{depth:g}"] = float(np.mean([niah.score(s, t) for s, t in zip(samples, texts)]))
                answer_nll[task][str(m)][f"{depth:g}"] = float(np.mean(answer_nlls(
                    source.spec, weights.params, pos, generator, samples, settings.batch_size, **forward)))
                if depth == settings.depths[len(settings.depths) // 2]:
                    examples[task][str(m)] = {"expected": generator.answer_text(samples[0]), "generated": texts[0]}
                progress.step(f"{label} {task} {m}x d{depth:g}")
    results["niah"][label] = accuracy
    results["niah_answer_nll"][label] = answer_nll
    results["niah_examples"][label] = examples


def answer_nlls(spec, params, pos, generator, samples, batch_size: int, *, use_qk_norm: bool = True,
                query_chunk: int | None = None) -> list[float]:
    """Mean NLL per token of each sample's correct answer, teacher-forced after its prompt: a graded
    retrieval score that moves before exact match does (a random 6-digit value costs ln 1e6 = 14 nats in all)."""
    answers = [generator.tokenizer.encode(generator.answer_text(s)) for s in samples]
    width, prompt = max(map(len, answers)), len(samples[0].prompt)
    rows = np.stack([np.concatenate([s.prompt, a, np.repeat(a[-1:], width - len(a))]) for s, a in zip(samples, answers)])
    nll_NT = evaluation.row_nll(spec, params, rows, pos, use_qk_norm=use_qk_norm, batch_size=batch_size,
                                query_chunk=query_chunk)
    return [float(nll_NT[i, prompt - 1:prompt - 1 + len(a)].mean()) for i, a in enumerate(answers)]


def generate_answers(spec, params, pos, generator, samples, batch_size: int, *, use_qk_norm: bool = True,
                     query_chunk: int | None = None) -> list[str]:
    """Greedy continuations (as text) of the samples' prompts, which share one length."""
    tokenizer = generator.tokenizer
    max_new = max(len(tokenizer.encode(generator.answer_text(s))) for s in samples) + 2
    texts = []
    for i in range(0, len(samples), batch_size):
        batch = [s.prompt for s in samples[i:i + batch_size]]
        real = len(batch)
        batch += batch[-1:] * (batch_size - real)  # a full batch: one compiled shape for every call
        tokens = decode.greedy_generate(params, np.stack(batch), spec=spec, pos=pos, max_new_tokens=max_new,
                                        use_qk_norm=use_qk_norm, query_chunk=query_chunk)
        texts += [tokenizer.decode(row) for row in np.asarray(tokens)[:real]]
    return texts
