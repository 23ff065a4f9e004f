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

from drope_jax.data import niah, pipeline
from drope_jax.errors import ConfigError
from drope_jax.eval import decode, perplexity, temperature
from drope_jax.eval.methods import TEMPERED, Run, method_pos, method_weights

PPL_TASK, NIAH_TASK = "ppl", "niah"


@dataclasses.dataclass(frozen=True)
class Settings:
    methods: tuple[tuple[str, str | None], ...]  # (name, other workdir or None)
    lengths: tuple[int, ...] = (1, 2, 4, 8)  # multiples of the training context
    tasks: tuple[str, ...] = (PPL_TASK, NIAH_TASK)
    niah_tasks: tuple[str, ...] = niah.TASKS
    depths: tuple[float, ...] = (0.0, 0.25, 0.5, 0.75, 1.0)
    niah_samples: int = 8  # prompts per task x length x depth
    niah_needles: int = 4  # (key, value) pairs in multikey, multivalue and multiquery, as the DroPE paper's protocol
    ppl_sequences: int = 16  # rows at the longest length; shorter lengths cover the same text in more rows
    batch_size: int = 4  # rows per forward at the longest length; shorter lengths take more (same tokens)
    query_chunk: int = 256  # attention queries per chunk: memory linear in length, faster on CPU (0: none)
    template: str = "auto"  # NIAH wording: "ruler", "short", "code", or auto (ruler or short) by the context
    values: str = "number"
    seed: int = 0
    temperature_c: float | None = None  # c of the tempered methods (drope, nope); None: fitted per model
    temperature_sequences: int = 8  # tuning rows at the longest length for the fit

    def __post_init__(self):
        unknown = set(self.tasks) - {PPL_TASK, NIAH_TASK} or set(self.niah_tasks) - set(niah.TASKS)
        if unknown:
            raise ConfigError(f"unknown tasks {sorted(unknown)}: --tasks takes {PPL_TASK},{NIAH_TASK}; "
                              f"--niah_tasks takes {','.join(niah.TASKS)}")
        if not self.lengths or min(self.lengths) < 1:
            raise ConfigError(f"--lengths={self.lengths}: give multiples of the training context, >= 1")
        if self.niah_needles < 2:
            raise ConfigError(f"--niah_needles={self.niah_needles}: a multi-needle task needs at least 2")
        if self.temperature_c is not None and self.temperature_c < 0:
            raise ConfigError(f"--temperature={self.temperature_c}: c must be >= 0 (0 turns it off)")


class _Progress:
    def __init__(self, total: int):
        self.bar = tqdm(total=total, unit="cell", dynamic_ncols=True, mininterval=1.0,
                        disable=jax.process_index() != 0)

    def step(self, what: str) -> None:
        self.bar.set_description(what, refresh=False)
        self.bar.update(1)


def evaluate(run: Run, settings: Settings, log=print) -> dict:
    corpus = pipeline.open_corpus(run.config.data)
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
    held_out = None  # ({length: rows}, documents): the same text for every method
    if PPL_TASK in settings.tasks:
        held_out = pipeline.same_text_rows(corpus, context, settings.lengths, settings.ppl_sequences)
    tempering = Tempering(corpus, context, settings, log) if any(n in TEMPERED for n, _ in settings.methods) else None
    generator, prompts = None, {}
    if NIAH_TASK in settings.tasks:
        tokenizer = corpus.tokenizer()
        template = niah.pick_template(tokenizer, context, settings.template)
        haystack = corpus.haystack("val", 4 * context * max(settings.lengths))
        generator = niah.Generator(tokenizer, haystack, template=template, values=settings.values, seed=settings.seed,
                                     num_needles=settings.niah_needles)
        shortest, needs = min(settings.lengths) * context, max(generator.room_needed(t) for t in settings.niah_tasks)
        if needs >= shortest:
            raise ConfigError(f"NIAH template {template!r} needs {needs} tokens for needles and queries, more than "
                              f"the shortest prompt ({shortest} tokens); use --template=short or longer --lengths")
        prompts = {m: niah_prompts(generator, settings, m * context) for m in settings.lengths}
        log(f"NIAH: template {template!r}, {settings.niah_samples} prompts per task x length x depth, "
            f"{len(haystack):,} held-out haystack tokens; answers end at the length (room: "
            f"{', '.join(f'{m}x {room} tokens' for m, (_, room) in prompts.items())})")

    results = {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "device": f"{jax.devices()[0].device_kind} ({jax.default_backend()}, {jax.device_count()} devices)",
        "run": {"workdir": str(run.workdir), "init_from": run.init_from, "step": run.final_step,
                "flip_step": run.flip_step, "trained_positions": run.trained_pos.describe(), "context": context},
        "settings": {**dataclasses.asdict(settings), "template": generator.template.name if generator else None},
        "lengths": {str(m): m * context for m in settings.lengths},
        "methods": {}, "temperature": {}, "ppl": {}, "loss_by_position": {}, "niah": {}, "niah_interval": {},
        "niah_answer_nll": {}, "niah_examples": {},
    }
    per_method = (len(settings.lengths) * (PPL_TASK in settings.tasks)
                  + len(settings.lengths) * len(settings.niah_tasks) * len(settings.depths) * (generator is not None))
    progress = _Progress(per_method * len(settings.methods))
    devices = run.mesh.size
    rows_per_batch = perplexity.batch_rows(settings.batch_size, settings.lengths, devices)
    timing = {"load": 0.0, "temperature": 0.0, PPL_TASK: 0.0, NIAH_TASK: 0.0}
    compiles = _Compilations()
    done = {}  # (task, weights, use_qk_norm, encoding, length) -> its results: equal cells are computed once
    start = time.time()
    for name, where in settings.methods:
        label = name if where is None else f"{name}@{where}"
        source = runs[where]
        loading = time.time()
        weights = source.weights(method_weights(name))
        jax.block_until_ready(weights.params)
        timing["load"] += time.time() - loading
        method_encodings = encodings[(name, where)]
        if name in TEMPERED:
            began = time.time()
            tempered = tempering.of(label, source, weights, rows_per_batch, chunk)
            timing["temperature"] += time.time() - began
            results["temperature"][label] = tempered.to_json(settings.lengths)
            method_encodings = {m: temperature.encoding(tempered.c, m, p) for m, p in method_encodings.items()}
        results["methods"][label] = {"weights": weights.source, "phase": weights.phase,
                                     "encoding": {str(m): p.describe() for m, p in method_encodings.items()}}
        if weights.phase == "rope" and name.startswith("drope"):
            log(f"note: {label} drops RoPE from weights trained with it ({weights.source}), with no recalibration")
        if PPL_TASK in settings.tasks:
            began = time.time()
            _perplexity(results, label, source, weights, method_encodings, held_out, rows_per_batch, chunk,
                        source.mesh, progress, done)
            timing[PPL_TASK] += time.time() - began
        if generator is not None:
            began = time.time()
            _needles(results, label, source, weights, method_encodings, generator, prompts, settings,
                     rows_per_batch, chunk, source.mesh, progress, done)
            timing[NIAH_TASK] += time.time() - began
    progress.bar.close()
    compiles.close()
    results["seconds"] = round(time.time() - start, 1)
    results["timing"] = {**{f"{k}_seconds": round(v, 1) for k, v in timing.items()},
                         "compilations": compiles.count, "compile_seconds": round(compiles.seconds, 1),
                         "devices": devices, "rows_per_batch": {str(m): b for m, b in rows_per_batch.items()}}
    return results


class Tempering:
    """The temperature of each tempered method's weights: set by hand (``Settings.temperature_c``) or fitted
    once per weights on the held-out split's tuning part, at the evaluated lengths above 1x."""

    def __init__(self, corpus, context: int, settings: Settings, log=print):
        self.c, self.log, self.fitted = settings.temperature_c, log, {}
        self.rows, self.documents = {}, 0
        if self.c is None:
            self.rows, self.documents = temperature.tuning_rows(corpus, context, settings.lengths,
                                                                settings.temperature_sequences)

    def of(self, label: str, source: Run, weights, rows_per_batch, chunk) -> temperature.Temperature:
        if self.c is not None or not self.rows:
            return temperature.Temperature(c=self.c or 0.0, how="set" if self.c else "off")
        key = (weights.source, weights.use_qk_norm)
        if key not in self.fitted:
            began = time.time()
            t = self.fitted[key] = temperature.fit_on(
                source.spec, weights.params, self.rows, use_qk_norm=weights.use_qk_norm,
                rows_per_batch=rows_per_batch, query_chunk=chunk, mesh=source.mesh, tuning_documents=self.documents)
            self.log(f"{label}: temperature c={t.c:.3f} fitted on {len(self.rows[max(self.rows)])} tuning rows "
                     f"({self.documents} documents) in {time.time() - began:.1f} s, {len(t.tried)} candidates; "
                     "tuning perplexity without -> with it: " + ", ".join(
                         f"{m}x {math.exp(t.tuning_nll_raw[m]):.3f} -> {math.exp(t.tuning_nll[m]):.3f}"
                         for m in self.rows))
            if t.at_bound:
                self.log(f"warning: {label}'s c ended at the search's upper bound {temperature.C_MAX}: the tuning "
                         "perplexity still falls beyond it (an undertrained model?)")
        return self.fitted[key]


class _Compilations:
    """Counts XLA compilations (and their seconds) from now until ``close``; cache hits do not count."""

    def __init__(self):
        self.count, self.seconds = 0, 0.0
        jax.monitoring.register_event_duration_secs_listener(self._heard)

    def _heard(self, event: str, duration: float, **_) -> None:
        if event == "/jax/core/compile/backend_compile_duration":
            self.count, self.seconds = self.count + 1, self.seconds + duration

    def close(self) -> None:
        jax.monitoring.unregister_event_duration_listener(self._heard)


def _perplexity(results, label, source, weights, encodings, held_out, rows_per_batch, chunk, mesh, progress, done):
    ppl, by_position = {}, {}
    width = max(source.context // 2, 1)
    rows, documents = held_out
    for m, pos in encodings.items():
        key = (PPL_TASK, weights.source, weights.use_qk_norm, pos, m)  # e.g. PI at 1x is RoPE at 1x
        if key in done:
            ppl[str(m)], by_position[str(m)] = done[key]
            progress.step(f"{label} ppl {m}x")
            continue
        sequences = rows[m]
        nll_T = perplexity.position_nll(source.spec, weights.params, sequences, pos, use_qk_norm=weights.use_qk_norm,
                                        batch_size=rows_per_batch[m], query_chunk=chunk, mesh=mesh)
        ppl[str(m)] = math.exp(float(np.mean(nll_T)))
        by_position[str(m)] = {"bucket_tokens": width, "nll": perplexity.bucket_means(nll_T, width),
                               "sequences": int(len(sequences)), "documents": documents}
        done[key] = ppl[str(m)], by_position[str(m)]
        progress.step(f"{label} ppl {m}x")
    results["ppl"][label] = ppl
    results["loss_by_position"][label] = by_position


def niah_prompts(generator: niah.Generator, settings: Settings, length: int) -> tuple[list[niah.Sample], int]:
    """Every NIAH prompt at one length (task-major, then depth, then sample) and the answer room: prompts are
    ``length - room`` tokens, so the longest correct answer ends exactly at ``length``."""
    cells = [(task, depth, i) for task in settings.niah_tasks for depth in settings.depths
             for i in range(settings.niah_samples)]
    room = max(generator.answer_tokens(task, length, depth, i) for task, depth, i in cells)
    return [generator.sample(task, length, depth, i, prompt_length=length - room) for task, depth, i in cells], room


def _needles(results, label, source, weights, encodings, generator, prompts, settings, rows_per_batch, chunk, mesh,
             progress, done):
    accuracy, interval, answer_nll, examples = ({task: {} for task in settings.niah_tasks} for _ in range(4))
    forward = dict(use_qk_norm=weights.use_qk_norm, query_chunk=chunk, mesh=mesh)
    middle = settings.depths[len(settings.depths) // 2]
    for m, pos in encodings.items():
        samples, room = prompts[m]
        key = (NIAH_TASK, weights.source, weights.use_qk_norm, pos, m)
        if key not in done:
            done[key] = answer_and_score(source.spec, weights.params, pos, generator, samples, rows_per_batch[m],
                                         room=room, **forward)
        texts, nlls = done[key]
        for task in settings.niah_tasks:
            accuracy[task][str(m)], interval[task][str(m)], answer_nll[task][str(m)] = {}, {}, {}
            for depth in settings.depths:
                cell = [i for i, s in enumerate(samples) if s.task == task and s.depth == depth]
                hits = sum(niah.score(samples[i], texts[i]) for i in cell)
                accuracy[task][str(m)][f"{depth:g}"] = hits / len(cell)
                interval[task][str(m)][f"{depth:g}"] = niah.wilson_interval(hits, len(cell))
                answer_nll[task][str(m)][f"{depth:g}"] = float(np.mean([nlls[i] for i in cell]))
                if depth == middle:
                    examples[task][str(m)] = {"expected": generator.answer_text(samples[cell[0]]),
                                              "generated": texts[cell[0]]}
                progress.step(f"{label} {task} {m}x d{depth:g}")
    results["niah"][label] = accuracy
    results["niah_interval"][label] = interval
    results["niah_answer_nll"][label] = answer_nll
    results["niah_examples"][label] = examples


def _answers(generator, samples, room: int | None = None) -> tuple[list[np.ndarray], np.ndarray]:
    """Each sample's correct answer as tokens, and all of them [N, room] (default: the longest answer's
    length), each padded with its last token."""
    answers = [generator.tokenizer.encode(generator.answer_text(s)) for s in samples]
    room = room or max(map(len, answers))
    return answers, np.stack([np.concatenate([a, np.repeat(a[-1:], room - len(a))]) for a in answers])


def answer_and_score(spec, params, pos, generator, samples, batch_size: int, *, room: int, use_qk_norm: bool = True,
                     query_chunk: int | None = None, mesh=None) -> tuple[list[str], list[float]]:
    """``generate_answers`` and ``answer_nlls`` from one prefill per batch: it reads each prompt followed by its
    correct answer (padded to ``room`` tokens), scores the answer, and greedy decoding of ``room + 1`` tokens
    continues from the prompt alone. One compiled program serves every batch of a length."""
    answers, teacher = _answers(generator, samples, room)
    rows = np.concatenate([np.stack([s.prompt for s in samples]), teacher], axis=1)
    prompt = len(samples[0].prompt)

    def answer(batch, real):
        tokens, nll_BA = decode.greedy_generate(params, perplexity.place(batch[:, :prompt], mesh), spec=spec,
                                                pos=pos, max_new_tokens=room + 1, use_qk_norm=use_qk_norm,
                                                query_chunk=query_chunk,
                                                teacher_BA=perplexity.place(batch[:, prompt:], mesh))
        return perplexity.to_host(tokens)[:real], perplexity.to_host(nll_BA)[:real]

    answered = perplexity.over_batches(answer, rows, batch_size)
    texts = [generator.tokenizer.decode(row) for tokens, _ in answered for row in tokens]
    nll_NA = np.concatenate([nll for _, nll in answered])
    return texts, [float(nll_NA[i, :len(a)].mean()) for i, a in enumerate(answers)]


def answer_nlls(spec, params, pos, generator, samples, batch_size: int, *, width: int | None = None,
                use_qk_norm: bool = True, query_chunk: int | None = None, mesh=None) -> list[float]:
    """Mean NLL per token of each sample's correct answer, teacher-forced after its prompt: a graded
    retrieval score that moves before exact match does (a random 6-digit value costs ln 1e6 = 14 nats in all).
    Rows are padded to ``width`` tokens (default: the longest prompt plus answer)."""
    prompt = len(samples[0].prompt)
    answers, padded = _answers(generator, samples, width and width - prompt)
    rows = np.concatenate([np.stack([s.prompt for s in samples]), padded], axis=1)
    nll_NT = perplexity.row_nll(spec, params, rows, pos, use_qk_norm=use_qk_norm, batch_size=batch_size,
                                query_chunk=query_chunk, mesh=mesh)
    return [float(nll_NT[i, prompt - 1:prompt - 1 + len(a)].mean()) for i, a in enumerate(answers)]


def generate_answers(spec, params, pos, generator, samples, batch_size: int, *, max_new_tokens: int | None = None,
                     use_qk_norm: bool = True, query_chunk: int | None = None, mesh=None) -> list[str]:
    """Greedy continuations (as text) of the samples' prompts, which share one length: ``max_new_tokens``
    tokens (default: the longest answer's, plus one), in full batches."""
    tokenizer = generator.tokenizer
    max_new = max_new_tokens or max(len(tokenizer.encode(generator.answer_text(s))) for s in samples) + 1
    texts = []
    for batch, real in perplexity.full_batches(np.stack([s.prompt for s in samples]), batch_size):
        tokens = decode.greedy_generate(params, perplexity.place(batch, mesh), spec=spec, pos=pos,
                                        max_new_tokens=max_new, use_qk_norm=use_qk_norm, query_chunk=query_chunk)
        texts += [tokenizer.decode(row) for row in perplexity.to_host(tokens)[:real]]
    return texts
