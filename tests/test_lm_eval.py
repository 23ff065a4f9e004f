"""lm-evaluation-harness (``lm_eval --model hf``) runs on drope-jax exports: RoPE, NoPE and remote-code DroPE.

A tiny random Llama model with a word-level tokenizer is written with ``transformers``, imported into Flax
parameters by ``drope_jax.hf`` and exported three ways: RoPE (LlamaForCausalLM), NoPE (SmolLM3ForCausalLM
with every layer NoPE) and NoPE with QK-norm (the DroPE format, ``trust_remote_code=True``). The harness
then runs the six-question task in ``tests/lm_eval_task`` (local data, nothing is downloaded) on each, and
every log-likelihood it reports must equal the one computed directly with ``AutoModelForCausalLM``.

The same run by hand, from the repository root:
    lm_eval --model hf --model_args pretrained=DIR,dtype=float32 --tasks drope_tiny_mc \
        --include_path tests/lm_eval_task --device cpu --batch_size 8
(add ``trust_remote_code=True`` to ``--model_args`` for a DroPE-format export).
"""

import os

# Before transformers, datasets or lm_eval are imported: never reach for the Hub.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["TOKENIZERS_PARALLELISM"] = "false"

import dataclasses
import json
import math
import pathlib

import jax
import lm_eval
import numpy as np
import pytest
import torch
import transformers
from lm_eval.tasks import TaskManager

from drope_jax import hf, sharding
from drope_jax.hf import load
from drope_jax.model import state

REPO = pathlib.Path(__file__).resolve().parents[1]
TASK_DIR = REPO / "tests" / "lm_eval_task"
TASK = "drope_tiny_mc"
DOCS = [json.loads(line) for line in (TASK_DIR / "tiny_mc.jsonl").read_text().splitlines() if line.strip()]
SPECIALS = ["<pad>", "<s>", "</s>", "<unk>"]  # ids 0-3
WORDS = sorted({w for d in DOCS for text in (d["query"], *d["choices"]) for w in text.split()})
V, D, LAYERS, F, HEADS, KV_HEADS = 64, 64, 2, 128, 4, 2
TOL = 1e-4  # float32 on both sides, the same torch model: only batching and padding may differ

# export name -> (position, QK-norm, class the export loads as, trust_remote_code)
EXPORTS = {
    "rope": ("rope", False, "LlamaForCausalLM", False),
    "nope": ("nope", False, "SmolLM3ForCausalLM", False),
    "nope-qk-norm": ("nope", True, "DroPELlamaForCausalLM", True),
    # the quickstart's kind: a byte-level model (257 tokens, no tokenizer given), its temperature folded in
    "bytes-nope-temperature": ("nope", False, "SmolLM3ForCausalLM", False),
}
BYTE_TEMPERATURE = hf.temperature.ExportTemperature(c=0.4, train_length=8, fold_length=32)


def write_tokenizer(path):
    """A word-level tokenizer over the task's words that prepends <s>, like a Llama tokenizer."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors

    vocab = {tok: i for i, tok in enumerate(SPECIALS + WORDS)}
    assert len(vocab) <= V
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    transformers.PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                                         unk_token="<unk>").save_pretrained(path)


def write_source(path):
    """A random Llama checkpoint with weights large enough that RoPE and NoPE disagree clearly."""
    config = transformers.LlamaConfig(vocab_size=V, hidden_size=D, intermediate_size=F, num_hidden_layers=LAYERS,
                                      num_attention_heads=HEADS, num_key_value_heads=KV_HEADS, rms_norm_eps=1e-5,
                                      rope_theta=100.0, bos_token_id=1, eos_token_id=2, pad_token_id=0)
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(config)
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(1 + 0.2 * torch.randn(p.shape) if "norm" in name else 0.15 * torch.randn(p.shape))
    model.save_pretrained(path)
    write_tokenizer(path)


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    """name -> exported Hugging Face directory, made from Flax parameters by drope_jax.hf.export_params."""
    root = tmp_path_factory.mktemp("lm_eval")
    write_source(root / "source")
    source = hf.read_source(root / "source")
    dirs = {}
    for name, (position, qk_norm, _, _) in EXPORTS.items():
        if name.startswith("bytes"):
            cfg = dataclasses.replace(source.model, vocab_size=257, init_std=0.3)
            params = state.init_params(state.model_spec(cfg), 0, sharding.make_mesh(devices=jax.devices()[:1]))
            hf.export_params(params, cfg, root / name, position=position, temperature=BYTE_TEMPERATURE)
        else:
            # QK-norm: the recalibration's start, the weights initialised to 1 on import
            cfg = dataclasses.replace(source.model, qk_norm="proj" if qk_norm else "none")
            params, _ = load.load_hf(root / "source", cfg, log=lambda _: None)
            hf.export_params(params, cfg, root / name, position=position, source_dir=root / "source")
        dirs[name] = root / name
    return dirs


def direct_loglikelihoods(path, remote: bool) -> list[list[float]]:
    """log p(choice | query) of each document's choices, straight from transformers: the harness's
    tokenization of a pair (the whole text encoded once, the context's tokens split off) done by hand."""
    model = transformers.AutoModelForCausalLM.from_pretrained(path, trust_remote_code=remote, dtype=torch.float32)
    tokenizer = transformers.AutoTokenizer.from_pretrained(path, trust_remote_code=remote)  # else it asks on stdin
    out = []
    for doc in DOCS:
        context = tokenizer(doc["query"]).input_ids
        row = []
        for choice in doc["choices"]:
            whole = tokenizer(f"{doc['query']} {choice}").input_ids
            assert whole[: len(context)] == context  # the harness splits a pair's tokens the same way
            assert path.name.startswith("bytes") or 3 not in whole  # no <unk>: the vocabulary covers the task
            with torch.no_grad():
                logits = model(torch.tensor([whole])).logits[0].double()
            logp = torch.log_softmax(logits, -1)
            row.append(sum(logp[t - 1, whole[t]].item() for t in range(len(context), len(whole))))
        out.append(row)
    return out


def run_harness(path, remote: bool) -> dict:
    model_args = f"pretrained={path},dtype=float32" + (",trust_remote_code=True" if remote else "")
    return lm_eval.simple_evaluate(model="hf", model_args=model_args, tasks=[TASK], device="cpu", batch_size=8,
                                   log_samples=True,
                                   # include_defaults=False: indexing the ~14,000 built-in task files takes 13 s here
                                   task_manager=TaskManager(include_path=str(TASK_DIR), include_defaults=False),
                                   random_seed=0, numpy_random_seed=0, torch_random_seed=0, fewshot_random_seed=0)


@pytest.mark.parametrize("name", list(EXPORTS))
def test_lm_eval_harness_runs_the_export(name, exports, monkeypatch):
    _, _, exported_class, remote = EXPORTS[name]
    path = exports[name]
    assert json.loads((path / "config.json").read_text())["architectures"] == [exported_class]
    monkeypatch.chdir(REPO)  # the task's data_files is relative to the repository root
    out = run_harness(path, remote)

    metrics = out["results"][TASK]
    assert out["n-samples"][TASK]["effective"] == len(DOCS)
    for metric in ("acc,none", "acc_norm,none"):
        assert isinstance(metrics[metric], float) and 0.0 <= metrics[metric] <= 1.0, metrics
    samples = sorted(out["samples"][TASK], key=lambda s: s["doc_id"])
    got = [[ll for ll, _is_greedy in s["filtered_resps"]] for s in samples]
    want = direct_loglikelihoods(path, remote)
    assert [len(row) for row in got] == [len(d["choices"]) for d in DOCS]
    np.testing.assert_allclose(got, want, rtol=0, atol=TOL, err_msg=f"{name}: lm-eval vs transformers")
    assert all(math.isfinite(ll) and ll < 0 for row in got for ll in row)
    # the accuracy the harness reports is the one its log-likelihoods give
    acc = np.mean([int(np.argmax(row)) == d["gold"] for row, d in zip(want, DOCS, strict=True)])
    assert metrics["acc,none"] == pytest.approx(acc)


def test_nope_export_is_evaluated_without_rope(exports):
    """The same weights read with and without RoPE give clearly different log-likelihoods, so the parity
    above would see a NoPE export silently evaluated as RoPE (or the other way round)."""
    rope = np.array(direct_loglikelihoods(exports["rope"], False))
    nope = np.array(direct_loglikelihoods(exports["nope"], False))
    assert np.abs(rope - nope).max() > 100 * TOL


def test_the_byte_level_export_tokenizes_and_generates_like_training(exports):
    """The quickstart's kind of export: AutoTokenizer gives the training tokens (bytes, no BOS), decodes them
    back, and generate continues a prompt with the model's own greedy tokens (here past the folded length)."""
    from drope_jax.data.tokenizer import ByteTokenizer
    from drope_jax.eval import decode, temperature

    path = exports["bytes-nope-temperature"]
    tokenizer = transformers.AutoTokenizer.from_pretrained(path)
    text = 'def f(x):\n    return "é€"  # ok'
    ids = tokenizer(text).input_ids
    assert ids == ByteTokenizer().encode(text).tolist() and tokenizer.decode(ids) == text
    assert tokenizer.eos_token_id == 256

    model = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    prompt = tokenizer(("def main(): pass\n" * 3)[:30], return_tensors="pt")
    generated = model.generate(**prompt, max_new_tokens=2, do_sample=False, eos_token_id=None)[0, 30:].tolist()
    cfg = dataclasses.replace(hf.read_source(path).model, compute_dtype="float32")
    params, _ = load.load_hf(path, cfg, log=lambda _: None)  # the folded weights: no further temperature
    want = decode.greedy_generate(params, prompt.input_ids.numpy().astype(np.int32), spec=state.model_spec(cfg),
                                  pos=temperature.NOPE, max_new_tokens=2)
    assert generated == np.asarray(want)[0].tolist()
