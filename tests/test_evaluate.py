"""The long-context evaluation: it can say yes as well as no, runs every method on a DroPE run and on runs
trained from scratch with ALiBi and RNoPE-SWA, writes its report, and in-training perplexity is logged."""

import contextlib
import functools
import io
import json
import os
import re
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from drope_jax import sharding
from drope_jax.data import niah, pipeline
from drope_jax.errors import ConfigError
from drope_jax.eval import final_table, methods, perplexity, report, suite, temperature
from drope_jax.eval.methods import Run, parse_methods
from drope_jax.model import loss, state
from drope_jax.model.config import ModelConfig
from drope_jax.model.positions import ROPE, PosEncoding
from drope_jax.train import loop

from test_train import read_metrics, tiny_config

FILLER = [f"w{i}" for i in range(40)]


class WordTokenizer:
    """One token per key word, per 2-digit value and per filler word: a retrieval task a tiny model
    learns in seconds."""

    def __init__(self):
        self.vocab = [" ", "=", ".", ","] + list(niah.WORDS) + [str(i) for i in range(10, 100)] + FILLER
        self.ids = {t: i for i, t in enumerate(self.vocab)}

    def encode(self, text):
        return np.asarray([self.ids[t] for t in re.findall(r"[A-Za-z]+\d*|\d+|\S|\s", text)], np.int32)

    def decode(self, ids):
        return "".join(self.vocab[int(i)] for i in ids)


def _passkey_scores(spec, params, generator, pos, length):
    """(exact-match accuracy, mean answer NLL) over 24 passkey prompts."""
    samples = [generator.sample("passkey", length, d, 1000 + i) for d in (0.0, 0.5, 1.0) for i in range(8)]
    texts = suite.generate_answers(spec, params, pos, generator, samples, batch_size=24)
    nlls = suite.answer_nlls(spec, params, pos, generator, samples, batch_size=24)
    return np.mean([niah.score(s, t) for s, t in zip(samples, texts)]), np.mean(nlls)


def test_retrieval_harness_says_yes_and_no():
    """A tiny model trained briefly on key-value retrieval passes the passkey task at 1x through the harness's
    prompts, greedy KV-cache decoding and exact-match scoring; untrained, or with attention cut to a
    4-token window so it cannot see the needle, it fails."""
    tok, length = WordTokenizer(), 48
    haystack = tok.encode(" ".join(np.random.default_rng(0).choice(FILLER, 2000)))
    generator = niah.Generator(tok, haystack, template="short", value_digits=2, seed=1)
    cfg = ModelConfig(vocab_size=len(tok.vocab), d_model=64, num_layers=2, num_heads=4, num_kv_heads=4, mlp_dim=128,
                      compute_dtype="float32").validate()
    spec = state.model_spec(cfg)
    untrained = state.init_params(spec, 0, sharding.make_mesh(devices=jax.devices()[:1]))
    tx = optax.adam(optax.warmup_cosine_decay_schedule(0.0, 3e-3, 30, 250, 3e-4))

    # 250 steps: this program runs longer than LLVM takes to optimize it (conftest turns that off)
    @functools.partial(jax.jit, compiler_options={"xla_backend_optimization_level": 2})
    def step(params, opt_state, tokens_BT):
        def loss_fn(p):  # the loss of the two answer tokens (the value and its full stop)
            logits = state.apply(spec, p, tokens_BT[:, :-1], ROPE)
            return jnp.mean(loss.token_nll(logits[:, -2:], tokens_BT[:, -2:]))

        grads = jax.grad(loss_fn)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state

    rng = np.random.default_rng(0)
    params, opt_state = untrained, tx.init(untrained)
    for _ in range(250):
        rows = []
        for _ in range(64):
            s = generator.sample("passkey", length, float(rng.random()), int(rng.integers(1 << 30)))
            rows.append(np.concatenate([s.prompt, tok.encode(generator.answer_text(s))]))
        params, opt_state = step(params, opt_state, np.stack(rows))

    trained, blind = _passkey_scores(spec, params, generator, ROPE, length), _passkey_scores(
        spec, params, generator, PosEncoding("rope", window=4), length)
    assert trained[0] >= 0.9 and _passkey_scores(spec, untrained, generator, ROPE, length)[0] <= 0.1
    assert blind[0] <= 0.2
    # The graded score agrees: the answer costs far less where the needle is visible (measured: 0.5 nats per
    # token against 3.3; chance is ln 90 = 4.5 for the value, averaged with the cheap full stop).
    assert trained[1] < 0.25 * blind[1], (trained, blind)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A DroPE run (flip at 4 of 8, perplexity every 4 steps) and short ALiBi, RNoPE-SWA and NoPE runs from
    scratch."""
    root = tmp_path_factory.mktemp("runs")

    def run(config, name):  # what the run printed goes to ROOT/NAME.out
        with contextlib.redirect_stdout(io.StringIO()) as out:
            loop.run(config, root / name)
        (root / f"{name}.out").write_text(out.getvalue())

    run(tiny_config(eval=dict(every_steps=4), train=dict(total_steps=8), drope=dict(flip_step=4)), "drope")
    for name, positions in (("alibi", dict(kind="alibi")), ("rnope_swa", dict(kind="rope", nope_every=2, window=16))):
        run(tiny_config(positions=positions, train=dict(total_steps=4), drope=dict(flip_step=None)), name)
    run(tiny_config(train=dict(total_steps=4), drope=dict(flip_step=0)), "nope")
    return root


def test_progress_lines_and_the_flip_name_the_encodings(runs):
    def encodings(name):
        return [line.split(" | ")[1] for line in (runs / f"{name}.out").read_text().splitlines()
                if line.startswith("step ")]

    assert encodings("drope") == ["rope"] * 4 + ["nope"] * 4 and encodings("alibi") == ["alibi"] * 4
    assert "=== flip at step 4: RoPE -> NoPE in every layer; fresh AdamW moments" in (runs / "drope.out").read_text()
    assert "=== flip at step 0: NoPE in every layer from the first step" in (runs / "nope.out").read_text()
    # each phase's step says when its compilation is done, before its first progress line
    assert re.findall(r"^compiled the (\w+) train step and ran step (\d+) in [\d.]+ s$",
                      (runs / "drope.out").read_text(), re.M) == [("rope", "1"), ("nope", "5")]


def test_the_final_table_shows_drope_with_its_fitted_temperature_beside_the_raw_one(runs):
    table = json.loads((runs / "drope" / "eval.json").read_text())
    c = table["temperature"]["c"]
    raw, tempered = table["perplexity"]["drope (step 8, final)"], table["perplexity"][f"drope + temperature c={c:.2f}"]
    assert tempered["1"] == raw["1"] and table["temperature"]["how"] == "fitted"
    assert np.log(table["temperature"]["tuning_ppl"]["2"]) <= np.log(table["temperature"]["tuning_ppl_raw"]["2"])
    assert "temperature" not in json.loads((runs / "alibi" / "eval.json").read_text())


def test_in_training_perplexity_is_logged_in_the_phase_being_trained(runs):
    records = [json.loads(line) for line in (runs / "drope" / "metrics.jsonl").read_text().splitlines()]
    evals = {r["step"]: r for r in records if "eval/ppl_1x" in r}
    assert sorted(evals) == [4, 8]
    assert [evals[s]["phase"] for s in (4, 8)] == ["rope", "nope"]
    assert all(np.isfinite(evals[s][f"eval/ppl_{m}x"]) for s in evals for m in (1, 2))
    assert read_metrics(runs / "drope")[3]["loss"] > 0  # the training records are still there


def test_evaluate_every_method_and_write_the_report(runs, tmp_path):
    settings = suite.Settings(
        methods=tuple(parse_methods(f"drope,rope,pi,ntk,yarn,alibi@{runs / 'alibi'},"
                                    f"rnope_swa@{runs / 'rnope_swa'}")),
        lengths=(1, 2), niah_tasks=("passkey",), depths=(0.0, 1.0), niah_samples=2, ppl_sequences=2,
        batch_size=2, query_chunk=16, template="short")
    results = suite.evaluate(Run(runs / "drope"), settings, log=lambda _: None)
    listed = results["methods"]
    assert listed["drope"]["weights"].endswith("step 8") and listed["drope"]["phase"] == "nope"
    assert all(listed[m]["weights"].endswith("step 4") and listed[m]["phase"] == "rope"
               for m in ("rope", "pi", "ntk", "yarn"))  # the flip-step checkpoint: the same weights
    assert listed["yarn"]["encoding"] == {"1": "rope", "2": "rope, yarn x2"}
    ppl = results["ppl"]
    assert len({ppl[m]["1"] for m in ("rope", "pi", "ntk", "yarn")}) == 1  # no scaling at 1x
    assert len({ppl[m]["2"] for m in ("rope", "pi", "ntk", "yarn")}) == 4
    assert all(np.isfinite(v) for by_length in ppl.values() for v in by_length.values())
    assert len(results["loss_by_position"]["drope"]["2"]["nll"]) == 4  # 64 positions in buckets of 16
    alibi = f"alibi@{runs / 'alibi'}"
    assert set(results["niah"][alibi]) == {"passkey"}
    assert set(results["niah"][alibi]["passkey"]["2"]) == {"0", "1"}
    assert all(0 < v < 20 for v in results["niah_answer_nll"][alibi]["passkey"]["2"].values())

    written = report.write(results, tmp_path / "eval")
    assert {p.name for p in written} == {"results.json", "report.md", "ppl_vs_length.png", "loss_by_position.png",
                                         "niah_heatmap.png"}
    report_md = (tmp_path / "eval" / "report.md").read_text()
    assert "| drope | " in report_md and "| yarn | passkey |" in report_md and "answer NLL" in report_md
    assert json.loads((tmp_path / "eval" / "results.json").read_text())["ppl"] == ppl


@pytest.mark.parametrize("asked, message", [
    ("alibi", "trained with it from scratch"),
    ("longrope", "unknown method"),
])
def test_a_method_the_run_cannot_supply_is_refused_by_name(runs, asked, message):
    with pytest.raises(ConfigError, match=message):
        settings = suite.Settings(methods=tuple(parse_methods(asked)), lengths=(1,), tasks=("ppl",))
        suite.evaluate(Run(runs / "drope"), settings, log=lambda _: None)
    with pytest.raises(ConfigError, match="scales RoPE"):
        settings = suite.Settings(methods=(("yarn", None),), lengths=(2,), tasks=("ppl",))
        suite.evaluate(Run(runs / "alibi"), settings, log=lambda _: None)
    with pytest.raises(ConfigError, match="template 'code' needs .* --template=short"):
        settings = suite.Settings(methods=(("drope", None),), lengths=(1,), tasks=("niah",), template="code")
        suite.evaluate(Run(runs / "drope"), settings, log=lambda _: None)


@pytest.mark.parametrize("model_type, extra, trained", [
    ("llama", {}, "rope"),
    ("smollm3", dict(no_rope_layers=[1, 0, 1, 0]), "rope, NoPE every 2 layers"),
])
def test_a_hugging_face_checkpoint_is_evaluated_in_its_own_position_mode(tmp_path, model_type, extra, trained):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    config_cls, model_cls = {"llama": (transformers.LlamaConfig, transformers.LlamaForCausalLM),
                             "smollm3": (transformers.SmolLM3Config, transformers.SmolLM3ForCausalLM)}[model_type]
    torch.manual_seed(0)
    hf_config = config_cls(vocab_size=257, hidden_size=32, intermediate_size=64, num_hidden_layers=4,
                           num_attention_heads=2, num_key_value_heads=1, rms_norm_eps=1e-5, rope_theta=10000.0,
                           tie_word_embeddings=False, bos_token_id=1, eos_token_id=2, pad_token_id=0, **extra)
    model_cls(hf_config).save_pretrained(tmp_path / "hf")
    c = tiny_config(model=dict(num_layers=4))
    run = Run(tmp_path / "out", config=c, init_from=f"hf:{tmp_path / 'hf'}")
    assert run.trained_pos.describe() == trained
    settings = suite.Settings(methods=(("rope", None), ("yarn", None), ("drope", None)), lengths=(1, 2),
                                   tasks=("ppl",), ppl_sequences=2, batch_size=2)
    results = suite.evaluate(run, settings, log=lambda _: None)
    assert results["methods"]["yarn"]["encoding"]["2"] == f"{trained}, yarn x2"
    assert results["ppl"]["rope"]["1"] == results["ppl"]["yarn"]["1"] != results["ppl"]["drope"]["1"]


def _settings(**kw):
    base = dict(methods=tuple(parse_methods("drope,rope,yarn")), lengths=(4, 8), niah_tasks=("passkey", "multivalue"),
                depths=(0.0, 1.0), niah_samples=3, ppl_sequences=3, batch_size=2, query_chunk=16, template="short")
    return suite.Settings(**{**base, **kw})


def test_batched_evaluation_equals_the_cell_by_cell_computation(runs):
    """Full batches across tasks, depths and samples, one decode length and one forward width per length
    change no number: each cell recomputed on its own (its own batch and shapes) gives the same scores."""
    settings = _settings()
    run = Run(runs / "drope")
    results = suite.evaluate(run, settings, log=lambda _: None)
    corpus = pipeline.open_corpus(run.config.data)
    tok = corpus.tokenizer()
    generator = niah.Generator(tok, corpus.haystack("val", 4 * 32 * 8), template="short")
    for name in ("drope", "yarn"):
        weights = run.weights(methods.method_weights(name))
        for m in settings.lengths:
            pos = methods.method_pos(name, run, float(m))
            if name in methods.TEMPERED:
                pos = temperature.encoding(results["temperature"][name]["c"], m, pos)
            sequences = pipeline.same_text_rows(corpus, 32, settings.lengths, settings.ppl_sequences)[0][m]
            alone = perplexity.perplexity(run.spec, weights.params, sequences, pos, batch_size=len(sequences))
            np.testing.assert_allclose(results["ppl"][name][str(m)], alone, rtol=1e-5)
            samples, room = suite.niah_prompts(generator, settings, m * 32)
            for task in settings.niah_tasks:
                for depth in settings.depths:
                    cell = [s for s in samples if s.task == task and s.depth == depth]
                    texts = suite.generate_answers(run.spec, weights.params, pos, generator, cell, len(cell))
                    nlls = suite.answer_nlls(run.spec, weights.params, pos, generator, cell, len(cell))
                    accuracy = results["niah"][name][task][str(m)][f"{depth:g}"]
                    assert accuracy == np.mean([niah.score(s, t) for s, t in zip(cell, texts)])
                    lo, hi = results["niah_interval"][name][task][str(m)][f"{depth:g}"]
                    assert lo <= accuracy <= hi and hi - lo > 0.3  # 3 prompts: a wide 95% interval
                    np.testing.assert_allclose(results["niah_answer_nll"][name][task][str(m)][f"{depth:g}"],
                                               np.mean(nlls), rtol=1e-5)
            assert all(len(s.prompt) + room == m * 32 for s in samples)  # prompt and answer fit the length


def test_compilations_do_not_grow_with_the_number_of_cells(runs, no_compilation_cache):
    counts = []
    for depths, samples in (((0.0,), 1), ((0.0, 0.5, 1.0), 3)):
        jax.clear_caches()
        settings = _settings(methods=(("drope", None),), lengths=(2,), niah_tasks=("passkey",), depths=depths,
                             niah_samples=samples)
        results = suite.evaluate(Run(runs / "drope"), settings, log=lambda _: None)
        counts.append(results["timing"]["compilations"])
    assert counts[0] == counts[1] > 0, counts


def test_rope_scalings_share_their_programs(runs, no_compilation_cache):
    """RoPE, PI, NTK and YaRN differ only in RoPE's frequency table, which the programs take as data, and NoPE
    is RoPE with zero frequencies: five methods compile what one does."""
    counts = {}
    for asked in ("rope", "rope,pi,ntk,yarn,drope"):
        jax.clear_caches()
        settings = _settings(methods=tuple(parse_methods(asked)), lengths=(4,), niah_tasks=("passkey",),
                             depths=(0.0,), niah_samples=1)
        results = suite.evaluate(Run(runs / "drope"), settings, log=lambda _: None)
        counts[asked] = results["timing"]["compilations"]
    assert counts["rope"] == counts["rope,pi,ntk,yarn,drope"] > 0, counts


def test_equal_cells_are_computed_once(runs, monkeypatch):
    """A cell with the weights, encoding and length of one already computed takes its results: PI at 1x is
    unscaled RoPE; the same run named twice is the same weights."""
    forwards, decodes = [], []
    position_nll, answer_and_score = suite.perplexity.position_nll, suite.answer_and_score
    monkeypatch.setattr(suite.perplexity, "position_nll",
                        lambda *a, **k: forwards.append(a[3]) or position_nll(*a, **k))
    monkeypatch.setattr(suite, "answer_and_score",
                        lambda *a, **k: decodes.append(a[2]) or answer_and_score(*a, **k))
    run = Run(runs / "drope")
    settings = _settings(methods=tuple(parse_methods("rope,pi")), lengths=(1, 2), tasks=("ppl",))
    results = suite.evaluate(run, settings, log=lambda _: None)
    assert [p.scaling for p in forwards] == ["none", "none", "linear"]  # rope 1x and 2x, then pi at 2x only
    assert results["ppl"]["pi"]["1"] == results["ppl"]["rope"]["1"] != results["ppl"]["pi"]["2"]
    twice = tuple(parse_methods(f"rope,rope@{runs / 'drope'}"))
    results = suite.evaluate(run, _settings(methods=twice, lengths=(4,), tasks=("niah",), depths=(0.0,)),
                                  log=lambda _: None)
    assert len(decodes) == 1 and results["niah"]["rope"] == results["niah"][f"rope@{runs / 'drope'}"]


def test_drope_is_evaluated_with_its_fitted_temperature_beside_the_raw_one(runs, tmp_path):
    """drope carries the temperature fitted on the tuning part; drope_raw is the same weights without it. In the
    context both are the same computation; past it the fitted c is a minimum of the tuning perplexity."""
    run = Run(runs / "drope")
    settings = _settings(methods=tuple(parse_methods("drope,drope_raw")), lengths=(1, 2, 4), tasks=("ppl",))
    logged = []
    results = suite.evaluate(run, settings, log=logged.append)
    fitted, ppl = results["temperature"]["drope"], results["ppl"]
    assert set(results["temperature"]) == {"drope"} and fitted["how"] == "fitted"
    assert ppl["drope"]["1"] == ppl["drope_raw"]["1"]  # bit for bit: beta is 1 within the context
    assert fitted["beta"] == {str(m): temperature.temperature_beta(fitted["c"], m) for m in (1, 2, 4)}
    assert results["methods"]["drope"]["encoding"]["4"] == f"nope, logit scale {fitted['beta']['4']:g}"
    assert any(line.startswith("drope: temperature c=") for line in logged)

    corpus = pipeline.open_corpus(run.config.data)
    tuning, documents = pipeline.same_text_rows(corpus, 32, (2, 4), settings.temperature_sequences, part="tuning")
    assert documents == fitted["tuning_documents"]
    weights = run.weights("final")

    def objective(c):
        return np.mean([np.mean(perplexity.row_nll(run.spec, weights.params, tuning[m], temperature.encoding(c, m),
                                                   batch_size=2)) for m in (2, 4)])

    best = objective(fitted["c"])  # a minimum over the search range [0, C_MAX]
    assert all(best <= objective(c) for c in (fitted["c"] - 0.1, fitted["c"] + 0.1) if 0 <= c <= temperature.C_MAX)
    assert fitted["at_bound"] == (fitted["c"] >= temperature.C_MAX - temperature.C_TOLERANCE)
    assert best <= objective(0.0) and np.mean(np.log(list(fitted["tuning_ppl"].values()))) == pytest.approx(best)
    report_md = report.markdown(results)
    assert "## Softmax temperature past the context" in report_md and f"| drope | {fitted['c']:.3f} |" in report_md


def test_a_temperature_set_by_hand_or_off(runs):
    run = Run(runs / "drope")
    sequences = pipeline.same_text_rows(pipeline.open_corpus(run.config.data), 32, (2,), 3)[0][2]
    weights = run.weights("final")
    for c in (0.412, 0.0):
        settings = _settings(methods=tuple(parse_methods("drope,drope_raw")), lengths=(2,), tasks=("ppl",),
                             temperature_c=c)
        results = suite.evaluate(run, settings, log=lambda _: None)
        assert results["temperature"]["drope"]["how"] == ("set" if c else "off")
        want = perplexity.perplexity(run.spec, weights.params, sequences, temperature.encoding(c, 2), batch_size=2)
        np.testing.assert_allclose(results["ppl"]["drope"]["2"], want, rtol=1e-5)
        assert (results["ppl"]["drope"]["2"] == results["ppl"]["drope_raw"]["2"]) == (c == 0)
    with pytest.raises(ConfigError, match="c must be >= 0"):
        _settings(temperature_c=-0.1)


def test_nope_from_scratch_gets_the_same_treatment(runs):
    nope = runs / "nope"
    settings = _settings(methods=tuple(parse_methods(f"nope@{nope},nope_raw@{nope}")), lengths=(1, 2), tasks=("ppl",))
    results = suite.evaluate(Run(runs / "drope"), settings, log=lambda _: None)
    assert set(results["temperature"]) == {f"nope@{nope}"}
    assert results["ppl"][f"nope@{nope}"]["1"] == results["ppl"][f"nope_raw@{nope}"]["1"]


def test_the_final_table_goes_on_without_tuning_text(runs, monkeypatch):
    same_text_rows = pipeline.same_text_rows

    def no_tuning_text(*args, part="report", **kwargs):
        if part == "tuning":
            raise ConfigError("the held-out split's tuning part is too short")
        return same_text_rows(*args, part=part, **kwargs)

    monkeypatch.setattr(pipeline, "same_text_rows", no_tuning_text)
    run, logged = Run(runs / "drope"), []
    table = final_table.final_eval(run.config, run.plan, run.spec, run.ckpt, pipeline.open_corpus(run.config.data),
                                   run.mesh, log=logged.append)
    assert "temperature" not in table and list(table["perplexity"]) == ["rope (step 4, before the flip)",
                                                                          "drope (step 8, final)"]
    assert logged[0] == "no temperature row: the held-out split's tuning part is too short"


def test_the_program_names_batch_size_and_query_chunk_when_device_memory_runs_out(runs):
    """launch/evaluate.py, run as a user runs it, with the suite raising what a GPU raises when it cannot
    allocate (the CPU never runs out)."""
    program = ("import runpy, sys, jax\n"
               "from drope_jax.eval import suite\n"
               "def evaluate(*_, **__):\n"
               "    raise jax.errors.JaxRuntimeError('RESOURCE_EXHAUSTED: Out of memory while trying to allocate "
               "8.00GiB.\\nmore')\n"
               "suite.evaluate = evaluate\n"
               "sys.argv = sys.argv[1:]\n"
               "runpy.run_path(sys.argv[0], run_name='__main__')\n")
    evaluate = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "launch", "evaluate.py")
    done = subprocess.run([sys.executable, "-c", program, evaluate, f"--workdir={runs / 'drope'}", "--batch_size=2"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 1 and done.stderr.strip().splitlines()[-1] == (
        "error: out of device memory (XLA: RESOURCE_EXHAUSTED: Out of memory while trying to allocate 8.00GiB.). "
        "Give each forward pass less: lower --batch_size (now 2: rows per pass at the longest length), or set "
        "--query_chunk=256 (attention memory linear in the length)"), done.stderr[-3000:]
