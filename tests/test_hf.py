"""The Hugging Face bridge, proven by logit parity on 512 tokens, both ways: Flax in float32 against transformers in
float64.

Models are tiny random ``transformers`` models built here (nothing is downloaded). Their weights are
drawn large enough that attention is sharp, so a RoPE layout or position-mode error moves the logits
far past the tolerance (checked in ``test_parity_would_see_a_wrong_position_mode``).
"""

import os

os.environ["HF_HUB_OFFLINE"] = "1"  # before transformers is imported: never reach for the Hub

import copy
import dataclasses
import functools
import json
import pathlib
import runpy
import subprocess
import sys

import jax
import numpy as np
import pytest
import torch
import transformers
from flax import traverse_util
from safetensors import safe_open
from safetensors.numpy import load_file, save_file

from drope_jax import hf, sharding
from drope_jax.errors import ConfigError
from drope_jax.hf import configs, load, modeling_drope
from drope_jax.model import state
from drope_jax.model.config import ModelConfig
from drope_jax.model.positions import NOPE, ROPE
from drope_jax.run_config import default_config, make_plan
from drope_jax.train import checkpoint, loop

REPO = pathlib.Path(__file__).resolve().parents[1]
V, D, LAYERS, F, HEADS = 300, 64, 2, 128, 4
T = 512  # parity input length: short inputs hide RoPE layout bugs
NEW_TOKENS = 4
TOL = 1e-3  # measured: Flax misses by 2e-5, a wrong position mode by 1.4; torch itself wanders by 3e-4 (in_float64)
POS = {"rope": ROPE, "nope": NOPE}

HF_CLASSES = {  # model_type -> (config class, model class); the *_drope ones stand for the official format
    "llama": (transformers.LlamaConfig, transformers.LlamaForCausalLM),
    "qwen2": (transformers.Qwen2Config, transformers.Qwen2ForCausalLM),
    "smollm3": (transformers.SmolLM3Config, transformers.SmolLM3ForCausalLM),
    "llama_drope": (modeling_drope.DroPELlamaConfig, modeling_drope.DroPELlamaForCausalLM),
    "qwen2_drope": (modeling_drope.DroPEQwen2Config, modeling_drope.DroPEQwen2ForCausalLM),
}


def randomize_(model, seed: int):
    """Weights large enough for sharp attention; norm weights and biases away from 1 and 0."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g)
            p.copy_(1 + 0.2 * noise if "norm" in name else (0.3 if "bias" in name else 0.15) * noise)
    return model


def make_hf(model_type: str, path, *, kv_heads=2, tied=False, theta=500.0, seed=0, **extra):
    config_cls, model_cls = HF_CLASSES[model_type]
    config = config_cls(vocab_size=V, hidden_size=D, intermediate_size=F, num_hidden_layers=LAYERS,
                        num_attention_heads=HEADS, num_key_value_heads=kv_heads, rms_norm_eps=1e-5,
                        rope_theta=theta, tie_word_embeddings=tied, bos_token_id=1, eos_token_id=2, pad_token_id=0,
                        **extra)
    model = randomize_(model_cls(config), seed).eval()
    model.save_pretrained(path)
    return model


def tokens(seed=0, length=T):
    return np.random.default_rng(seed).integers(3, V, (1, length)).astype(np.int32)


def in_float64(model):
    """A float64 copy: the reference. On the 2-core CI machine about 1 run in 5 of torch (float32 or 64) gave
    logits 3e-4 away from its other runs near position 511; Flax, deterministic, is 2e-5 from the usual ones."""
    return copy.deepcopy(model).double()


def hf_logits(model, toks):
    with torch.no_grad():
        return in_float64(model)(torch.from_numpy(toks).long()).logits.float().numpy()


def hf_greedy(model, toks):
    prompt = torch.from_numpy(toks[:, : T - NEW_TOKENS]).long()
    with torch.no_grad():  # eos_token_id=None: never stop early
        out = in_float64(model).generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=NEW_TOKENS,
                                         do_sample=False, eos_token_id=None, pad_token_id=0)
    return out[0, T - NEW_TOKENS:].numpy()


@functools.cache
def forward(cfg: ModelConfig, pos, use_qk_norm=True):
    spec = state.model_spec(cfg)
    return jax.jit(lambda p, t: state.apply(spec, p, t, pos, use_qk_norm=use_qk_norm))


def flax_logits(cfg, params, toks, pos, use_qk_norm=True):
    return np.asarray(forward(cfg, POS[pos], use_qk_norm)(params, toks))


def flax_greedy(cfg, params, toks, pos, use_qk_norm=True):
    """Greedy tokens after the first T - NEW_TOKENS, in a fixed-length buffer: causal, so the tail is ignored."""
    buf = toks.copy()
    for t in range(T - NEW_TOKENS, T):
        buf[0, t] = flax_logits(cfg, params, buf, pos, use_qk_norm)[0, t - 1].argmax()
    return buf[0, T - NEW_TOKENS:]


def assert_close(got, want, what):
    rel = np.abs(got - want).max() / np.abs(want).max()
    assert rel <= TOL, f"{what}: relative error {rel:.2e} > {TOL}"


def f32(cfg: ModelConfig) -> ModelConfig:
    return dataclasses.replace(cfg, compute_dtype="float32")


# (model_type, kwargs, position mode, class an export loads as, needs trust_remote_code)
CASES = {
    "llama-gqa-untied": ("llama", dict(kv_heads=2), "rope", "LlamaForCausalLM", False),
    "llama-mha-tied": ("llama", dict(kv_heads=4, tied=True, theta=10000.0), "rope", "LlamaForCausalLM", False),
    "qwen2-biases": ("qwen2", dict(kv_heads=2, theta=1e6), "rope", "Qwen2ForCausalLM", False),
    "smollm3-all-rope": ("smollm3", dict(kv_heads=2, tied=True, no_rope_layers=[1, 1]), "rope",
                         "LlamaForCausalLM", False),
    "smollm3-all-nope": ("smollm3", dict(kv_heads=4, tied=True, no_rope_layers=[0, 0]), "nope",
                         "SmolLM3ForCausalLM", False),
    "drope-llama-qk-norm": ("llama_drope", dict(kv_heads=2, attention_type="qk_norm_nope"), "nope",
                            "DroPELlamaForCausalLM", True),
    "drope-qwen2-nope": ("qwen2_drope", dict(kv_heads=2, tied=True, attention_type="nope"), "nope",
                         "DroPEQwen2ForCausalLM", True),
}


@pytest.mark.parametrize("case", list(CASES))
def test_hf_to_flax_to_hf(case, tmp_path):
    model_type, kwargs, pos, exported_class, remote = CASES[case]
    original = make_hf(model_type, tmp_path / "hf", **kwargs)
    toks = tokens()
    params, source = load.load_hf(tmp_path / "hf", log=lambda _: None)
    assert source.position == pos
    cfg = f32(source.model)
    want = hf_logits(original, toks)
    got = flax_logits(cfg, params, toks, pos)
    assert_close(got, want, f"{case}: Flax vs transformers")
    greedy = flax_greedy(cfg, params, toks, pos)
    np.testing.assert_array_equal(greedy, hf_greedy(original, toks))

    hf.export_params(params, cfg, tmp_path / "out", position=pos, source_dir=tmp_path / "hf")
    exported = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "out", trust_remote_code=remote).eval()
    assert type(exported).__name__ == exported_class
    assert_close(hf_logits(exported, toks), got, f"{case}: exported transformers model vs Flax")
    np.testing.assert_array_equal(hf_greedy(exported, toks), greedy)
    saved = json.loads((tmp_path / "out" / "config.json").read_text())
    assert (saved["bos_token_id"], saved["eos_token_id"], saved["pad_token_id"]) == (1, 2, 0)


def test_parity_would_see_a_wrong_position_mode(tmp_path):
    """The check above is sharp: the same weights in the other position mode miss by far more than TOL."""
    original = make_hf("llama", tmp_path / "hf")
    params, source = load.load_hf(tmp_path / "hf", log=lambda _: None)
    want = hf_logits(original, tokens())
    wrong = flax_logits(f32(source.model), params, tokens(), "nope")
    assert np.abs(wrong - want).max() / np.abs(want).max() > 100 * TOL


def random_params(cfg: ModelConfig, seed=0) -> dict:
    """Flax-native parameters (not from an import), placed over the 8 simulated devices."""
    rng = np.random.default_rng(seed)

    def draw(path, x):
        name = jax.tree_util.keystr(path)
        scale, base = (0.2, 1.0) if "norm" in name else ((0.3, 0.0) if "bias" in name else (0.15, 0.0))
        return (base + scale * rng.standard_normal(x.shape)).astype(x.dtype)

    host = jax.tree_util.tree_map_with_path(draw, state.model_spec(cfg).abstract_params)
    placed = state.model_spec(cfg).placed_params(sharding.make_mesh())
    return jax.tree.map(lambda x, a: jax.device_put(x, a.sharding), host, placed)


def write_workdir(workdir, cfg, params, *, phase, qk_norm_at_flip=False, step=7):
    ckpt = checkpoint.Checkpointer(pathlib.Path(workdir) / "checkpoints", async_save=False)
    meta = {"step": step, "phase": phase, "flip_step": 0, "tokens": 0, "model": cfg.to_dict(),
            "qk_norm_at_flip": qk_norm_at_flip}
    ckpt.save(step, {"params": params}, {}, meta)
    ckpt.wait()
    ckpt.close()


QK_NORM_WEIGHTS = ("blocks/attn/q_norm/weight", "blocks/attn/k_norm/weight")
BASE = ModelConfig(vocab_size=V, d_model=D, num_layers=LAYERS, num_heads=HEADS, num_kv_heads=2, mlp_dim=F,
                   rope_theta=300.0, norm_eps=1e-5, compute_dtype="float32")
# (config, checkpoint phase, qk_norm_at_flip, exported class, trust_remote_code, shard size in bytes)
FLAX_CASES = {
    "rope": (BASE, "rope", False, "LlamaForCausalLM", False, None),
    "nope-tied-sharded": (dataclasses.replace(BASE, tie_embeddings=True, num_kv_heads=4), "nope", False,
                          "SmolLM3ForCausalLM", False, 60_000),
    "nope-qk-norm": (dataclasses.replace(BASE, qk_norm="proj"), "nope", False, "DroPELlamaForCausalLM", True, None),
    "rope-qk-norm": (dataclasses.replace(BASE, qk_norm="proj"), "rope", False, "DroPELlamaForCausalLM", True, None),
    "rope-before-qk-norm-flip": (dataclasses.replace(BASE, qk_norm="proj"), "rope", True, "LlamaForCausalLM", False,
                                 None),
    "nope-biases": (dataclasses.replace(BASE, attention_bias=True), "nope", False, "DroPEQwen2ForCausalLM", True,
                    None),
}


@pytest.mark.parametrize("case", list(FLAX_CASES))
def test_flax_checkpoint_to_hf_and_back(case, tmp_path):
    cfg, phase, qk_at_flip, exported_class, remote, shard_bytes = FLAX_CASES[case]
    params = random_params(cfg)
    write_workdir(tmp_path / "run", cfg, params, phase=phase, qk_norm_at_flip=qk_at_flip)
    hf_cfg = hf.export_checkpoint(tmp_path / "run", tmp_path / "out", max_shard_bytes=shard_bytes or 2**30,
                                  log=lambda _: None)
    qk_used = not qk_at_flip
    toks = tokens(1)
    want = flax_logits(cfg, params, toks, phase, use_qk_norm=qk_used)
    exported = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "out", trust_remote_code=remote).eval()
    assert type(exported).__name__ == exported_class
    assert_close(hf_logits(exported, toks), want, f"{case}: exported transformers model vs Flax")
    np.testing.assert_array_equal(hf_greedy(exported, toks), flax_greedy(cfg, params, toks, phase, qk_used))
    if shard_bytes:
        assert len(list((tmp_path / "out").glob("model-*-of-*.safetensors"))) > 1
        assert (tmp_path / "out" / "model.safetensors.index.json").is_file()
    if cfg.qk_norm != "none" and not qk_used:
        assert "attention_type" not in hf_cfg  # the unused QK-norm weights are not exported

    back, source = load.load_hf(tmp_path / "out", log=lambda _: None)
    assert source.position == phase
    expected = traverse_util.flatten_dict(jax.device_get(params), sep="/")
    if not qk_used:
        expected = {k: v for k, v in expected.items() if k not in QK_NORM_WEIGHTS}
    got = traverse_util.flatten_dict(jax.device_get(back), sep="/")
    assert set(got) == set(expected)
    for name in expected:  # float32 both ways: bit-exact
        np.testing.assert_array_equal(got[name], expected[name], err_msg=name)


def test_bfloat16_export_loads(tmp_path):
    params = random_params(BASE)
    write_workdir(tmp_path / "run", BASE, params, phase="nope")
    hf.export_checkpoint(tmp_path / "run", tmp_path / "out", dtype="bfloat16", log=lambda _: None)
    with safe_open(tmp_path / "out" / "model.safetensors", framework="numpy") as f:
        assert {f.get_slice(k).get_dtype() for k in f.keys()} == {"BF16"}
    assert json.loads((tmp_path / "out" / "config.json").read_text())["dtype"] == "bfloat16"
    model = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "out")
    assert next(model.parameters()).dtype == torch.bfloat16
    want = flax_logits(BASE, params, tokens(2), "nope")
    got = hf_logits(model.float().eval(), tokens(2))
    assert np.abs(got - want).max() / np.abs(want).max() < 0.05  # bf16 rounding only


def write_tokenizer(path):
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2, **{f"w{i}": i for i in range(3, V)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<pad>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>",
                                                pad_token="<pad>")
    fast.save_pretrained(path)


def test_commands_import_then_export(tmp_path):
    """launch/import_hf.py then launch/convert_to_hf.py: the original model back, tokenizer and ids included."""
    original = make_hf("llama", tmp_path / "hf", kv_heads=2)
    write_tokenizer(tmp_path / "hf")
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": ""}
    for command in (["launch/import_hf.py", f"--hf_dir={tmp_path / 'hf'}", f"--workdir={tmp_path / 'run'}"],
                    ["launch/convert_to_hf.py", f"--workdir={tmp_path / 'run'}", f"--out={tmp_path / 'out'}"]):
        done = subprocess.run([sys.executable, *command], cwd=REPO, env=env, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr[-3000:]
    assert "LlamaForCausalLM" in done.stdout
    exported = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "out").eval()
    toks = tokens(3)
    assert_close(hf_logits(exported, toks), hf_logits(original, toks), "import_hf.py + convert_to_hf.py round trip")
    tokenizer = transformers.AutoTokenizer.from_pretrained(tmp_path / "out")
    assert tokenizer("w5 w7").input_ids == [5, 7]
    assert (exported.config.bos_token_id, exported.config.eos_token_id, exported.config.pad_token_id) == (1, 2, 0)


# ---- errors that name the problem ----

def test_unsupported_architecture_lists_the_supported_ones(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"]}))
    with pytest.raises(hf.HFFormatError, match="gpt2") as e:
        hf.read_source(tmp_path)
    for supported in ("llama", "qwen2", "smollm3", "llama_drope", "qwen2_drope"):
        assert supported in str(e.value)


LLAMA_JSON = {"model_type": "llama", "vocab_size": V, "hidden_size": D, "intermediate_size": F,
              "num_hidden_layers": LAYERS, "num_attention_heads": HEADS}


@pytest.mark.parametrize("change, named", [
    ({"hidden_act": "gelu"}, "hidden_act"),
    ({"attention_bias": True}, "attention_bias"),
    ({"mlp_bias": True}, "mlp_bias"),
    ({"rope_scaling": {"rope_type": "linear", "factor": 2.0}}, "linear"),
    ({"model_type": "qwen2", "use_sliding_window": True}, "use_sliding_window"),
    ({"model_type": "llama_drope", "attention_type": "q_norm_nope"}, "attention_type"),
    ({"model_type": "llama_drope", "softmax_scale": 0.1}, "softmax_scale"),
])
def test_unsupported_config_values_are_named(change, named):
    with pytest.raises(hf.HFFormatError, match=named):
        hf.model_config_from_hf({**LLAMA_JSON, **change})


def test_config_json_without_defaults_gets_the_family_defaults():
    """save_pretrained may omit keys equal to class defaults; each family's defaults stand in."""
    assert hf.model_config_from_hf(LLAMA_JSON).model == ModelConfig(
        vocab_size=V, d_model=D, num_layers=LAYERS, num_heads=HEADS, num_kv_heads=HEADS, mlp_dim=F,
        tie_embeddings=False, rope_theta=10000.0, norm_eps=1e-6)
    smollm3 = hf.model_config_from_hf({**LLAMA_JSON, "model_type": "smollm3", "num_hidden_layers": 4})  # NoPE: 4th
    assert (smollm3.model.tie_embeddings, smollm3.model.rope_theta, smollm3.position) == (True, 2e6, "mixed")
    assert hf.model_config_from_hf({**LLAMA_JSON, "rope_parameters": {"rope_type": "default", "rope_theta": 5.0},
                                    "head_dim": 32}).model.head_dim == 32


def _rewrite(path, change):
    tensors = load_file(path / "model.safetensors")
    change(tensors)
    save_file(tensors, path / "model.safetensors", metadata={"format": "pt"})


def test_missing_tensor_is_named(tmp_path):
    make_hf("llama", tmp_path)
    _rewrite(tmp_path, lambda t: t.pop("model.layers.1.mlp.up_proj.weight"))
    with pytest.raises(hf.HFFormatError, match=r"model\.layers\.1\.mlp\.up_proj\.weight"):
        load.load_hf(tmp_path)


def test_shape_mismatch_names_the_tensor(tmp_path):
    make_hf("llama", tmp_path)
    _rewrite(tmp_path, lambda t: t.update({"model.layers.0.self_attn.k_proj.weight": np.zeros((48, D), np.float32)}))
    with pytest.raises(hf.HFFormatError, match=r"model\.layers\.0\.self_attn\.k_proj\.weight.*\(48, 64\)"):
        load.load_hf(tmp_path)


def test_tensor_the_model_has_no_place_for_is_named(tmp_path):
    make_hf("llama", tmp_path)
    _rewrite(tmp_path, lambda t: t.update({"model.layers.0.self_attn.o_proj.bias": np.zeros(D, np.float32)}))
    with pytest.raises(hf.HFFormatError, match=r"o_proj\.bias"):
        load.load_hf(tmp_path)


def test_qk_norm_starts_at_one_and_is_named_when_the_source_has_none(tmp_path):
    make_hf("llama", tmp_path)
    cfg = dataclasses.replace(hf.read_source(tmp_path).model, qk_norm="proj")
    logs = []
    params, _ = load.load_hf(tmp_path, cfg, log=logs.append)
    np.testing.assert_array_equal(np.asarray(params["blocks"]["attn"]["q_norm"]["weight"]), 1.0)
    assert any("blocks/attn/q_norm/weight" in line and "initialized to 1" in line for line in logs)


def test_trained_qk_norm_weights_are_never_dropped(tmp_path):
    make_hf("llama_drope", tmp_path, attention_type="qk_norm_nope")
    cfg = dataclasses.replace(hf.read_source(tmp_path).model, qk_norm="none")
    with pytest.raises(hf.HFFormatError, match="config.model.qk_norm"):
        load.load_hf(tmp_path, cfg)


def test_init_from_hf_checks_config_model_before_training(tmp_path):
    """loop.run dispatches "hf:DIR" to the bridge, which names each config.model key that disagrees."""
    make_hf("llama", tmp_path / "hf")
    c = default_config()
    c.model.update(vocab_size=V, d_model=D, num_layers=LAYERS, num_heads=HEADS, num_kv_heads=2, mlp_dim=2 * F,
                   rope_theta=500.0, norm_eps=1e-6)
    c.train.update(global_batch_size=8, total_steps=2)
    c.init_from = f"hf:{tmp_path / 'hf'}"
    with pytest.raises(ConfigError, match=r"config\.model\.mlp_dim=256 but config\.json gives 128") as e:
        loop.run(c, tmp_path / "run")
    assert "norm_eps" in str(e.value)
    assert not (tmp_path / "run" / "checkpoints" / "0").exists()


def test_mixed_smollm3_imports_its_weights_and_says_so(tmp_path):
    make_hf("smollm3", tmp_path, no_rope_layers=[1, 0])
    logs = []
    _, source = load.load_hf(tmp_path, log=logs.append)
    assert source.position == "mixed"
    assert any("RoPE in some layers only" in line for line in logs)


def test_exports_without_a_format_are_refused():
    with pytest.raises(hf.HFFormatError, match="has no Hugging Face export"):
        configs.export_kind(BASE, "mixed", True)
    with pytest.raises(hf.HFFormatError, match="qk_norm='head'"):
        configs.export_kind(dataclasses.replace(BASE, qk_norm="head"), "nope", True)


def test_model_fields_fill_a_run_config(tmp_path):
    make_hf("qwen2", tmp_path, theta=1e6)
    c = default_config()
    c.model.update(hf.model_fields(tmp_path))
    assert ModelConfig.from_dict(dict(c.model)).attention_bias
    assert c.model.rope_theta == 1e6 and c.model.num_kv_heads == 2


@pytest.mark.parametrize("name", ["smollm_360m_drope", "smollm_360m_drope_qk_norm", "smollm_1p7b_drope",
                                  "smollm_1p7b_drope_qk_norm", "llama2_7b_drope", "llama2_7b_drope_qk_norm"])
def test_recalibration_configs_follow_the_recipe(name):
    c = runpy.run_path(str(REPO / "configs" / f"{name}.py"))["get_config"]("/models/x")
    plan = make_plan(c)
    assert c.init_from == "hf:/models/x" and plan.flip_step == 0
    assert c.train.global_batch_size == 512
    assert c.data.seq_len == (4096 if name.startswith("llama2") else 2048)
    assert c.optim.lr == (1e-4 if name == "llama2_7b_drope" else 3e-4)
    assert plan.model.qk_norm == ("proj" if name.endswith("qk_norm") else "none")


# ---- the softmax temperature past the context ----

C, TRAIN_LENGTH = 0.4, 128  # parity at 2x and 4x: 256 and 512 tokens
# case -> (config, fold the temperature into the weights, exported class)
TEMPERATURE_CASES = {
    "folded-stock": (BASE, True, "SmolLM3ForCausalLM"),
    "folded-into-qk-norm": (dataclasses.replace(BASE, qk_norm="proj"), True, "DroPELlamaForCausalLM"),
    "folded-with-biases": (dataclasses.replace(BASE, attention_bias=True), True, "DroPEQwen2ForCausalLM"),
    "at-run-time": (BASE, False, "DroPELlamaForCausalLM"),
}


@pytest.mark.parametrize("case", list(TEMPERATURE_CASES))
def test_export_carries_the_temperature(case, tmp_path):
    """Flax with beta(s) = 1 + c ln(s) against the exported model at 2x and 4x the training context: folded
    into the queries for that length, or applied by the modelling file from the input's length."""
    cfg, fold, exported_class = TEMPERATURE_CASES[case]
    params = random_params(cfg)
    for s in (2, 4):
        if fold or s == 2:  # one run-time export serves every length
            out = tmp_path / f"out{s}"
            temperature = hf.temperature.ExportTemperature(C, TRAIN_LENGTH, s * TRAIN_LENGTH if fold else None)
            hf_cfg = hf.export_params(params, cfg, out, position="nope", temperature=temperature)
            exported = transformers.AutoModelForCausalLM.from_pretrained(out, trust_remote_code=True).eval()
            assert type(exported).__name__ == exported_class
            assert ("temperature_c" in hf_cfg) != fold and ("drope_temperature_folded" in hf_cfg) == fold
        toks = tokens(s, length=s * TRAIN_LENGTH)
        want = np.asarray(forward(cfg, temperature_encoding(s))(params, toks))
        got = hf_logits(exported, toks)
        assert_close(got, want, f"{case} at {s}x")
        raw = np.asarray(forward(cfg, NOPE)(params, toks))
        assert np.abs(got - raw).max() / np.abs(raw).max() > 10 * TOL  # the temperature is there to be seen
        logged = []
        load.load_hf(out, log=logged.append)
        assert ("folded in" if fold else "at run time") in logged[0]
    if not fold:  # within the context, no temperature
        toks = tokens(5, length=TRAIN_LENGTH)
        assert_close(hf_logits(exported, toks), np.asarray(forward(cfg, NOPE)(params, toks)), f"{case} at 1x")


def temperature_encoding(s):
    from drope_jax.eval import temperature
    return temperature.encoding(C, s)


def test_convert_takes_the_fitted_temperature_of_the_exported_step(tmp_path):
    params = random_params(BASE)
    write_workdir(tmp_path / "run", BASE, params, phase="nope", step=7)
    config = default_config()
    config.data.seq_len = TRAIN_LENGTH
    (tmp_path / "run" / "config.json").write_text(config.to_json())
    logged = []
    hf_cfg = hf.export_checkpoint(tmp_path / "run", tmp_path / "none", log=logged.append)
    assert "temperature_c" not in hf_cfg and "run launch/evaluate.py first" in logged[0]

    (tmp_path / "run" / "eval").mkdir()
    results = {"run": {"step": 7, "init_from": "", "context": TRAIN_LENGTH}, "temperature": {"drope": {"c": C}}}
    (tmp_path / "run" / "eval" / "results.json").write_text(json.dumps(results))
    hf_cfg = hf.export_checkpoint(tmp_path / "run", tmp_path / "auto", log=logged.append)
    assert (hf_cfg["temperature_c"], hf_cfg["temperature_train_length"]) == (C, TRAIN_LENGTH)
    assert "trust_remote_code" in logged[-2] and "from each input's length" in logged[-1]
    hf_cfg = hf.export_checkpoint(tmp_path / "run", tmp_path / "set", temperature=0.103, temperature_length=512,
                                  log=logged.append)
    assert hf_cfg["drope_temperature_folded"]["beta"] == pytest.approx(1 + 0.103 * np.log(4))
    assert hf_cfg["architectures"] == ["SmolLM3ForCausalLM"]
    assert "temperature_c" not in hf.export_checkpoint(tmp_path / "run", tmp_path / "off", temperature="off",
                                                       log=logged.append)
    write_workdir(tmp_path / "rope", BASE, params, phase="rope", step=7)
    with pytest.raises(ConfigError, match="applies to NoPE"):
        hf.export_params(params, BASE, tmp_path / "bad", position="rope",
                         temperature=hf.temperature.ExportTemperature(C, TRAIN_LENGTH))
