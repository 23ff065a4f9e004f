"""Hugging Face ``config.json`` <-> ModelConfig, for the families the bridge supports.

Reading needs no ``transformers``: ``save_pretrained`` may leave out keys equal to a class's defaults,
so the few defaults that change a model's function are written down here per family.
"""

from __future__ import annotations

import dataclasses
import json

from drope_jax import paths
from drope_jax.errors import ConfigError
from drope_jax.model.config import ModelConfig

# model_type -> (what it covers, defaults of the keys that save_pretrained may omit)
_LLAMA = dict(tie_word_embeddings=False, rms_norm_eps=1e-6, rope_theta=10000.0)
_QWEN2 = dict(tie_word_embeddings=False, rms_norm_eps=1e-6, rope_theta=10000.0)
FAMILIES = {
    "llama": ("Llama, SmolLM, SmolLM2", _LLAMA),
    "qwen2": ("Qwen2 (q/k/v biases)", _QWEN2),
    "smollm3": ("SmolLM3", dict(tie_word_embeddings=True, rms_norm_eps=1e-6, rope_theta=2_000_000.0)),
    "llama_drope": ("official DroPE release of a Llama-architecture model", _LLAMA),
    "qwen2_drope": ("official DroPE release of a Qwen2-architecture model", _QWEN2),
}
# attention_type of the DroPE formats. "qk_norm_rope" is ours: a QK-norm model exported before its flip.
ATTENTION_TYPES = {"nope": ("nope", "none"), "qk_norm_nope": ("nope", "proj"), "qk_norm_rope": ("rope", "proj")}
TOKEN_ID_KEYS = ("bos_token_id", "eos_token_id", "pad_token_id")
REQUIRED_KEYS = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads")


class HFFormatError(ConfigError):
    """A Hugging Face checkpoint the bridge cannot convert; the message names the key or tensor."""


@dataclasses.dataclass(frozen=True)
class HFSource:
    """What a Hugging Face checkpoint directory holds, in our terms."""

    model: ModelConfig
    position: str  # "rope", "nope", or "mixed" (a SmolLM3 with RoPE in some layers only)
    model_type: str
    config: dict  # config.json as read


def supported_list() -> str:
    return "; ".join(f"{t} ({what})" for t, (what, _) in FAMILIES.items())


def read_config_json(hf_dir) -> dict:
    path = paths.path(hf_dir) / "config.json"
    if not path.is_file():
        raise HFFormatError(f"{path} does not exist: give a local Hugging Face checkpoint directory "
                            "(e.g. `huggingface-cli download HuggingFaceTB/SmolLM-360M --local-dir DIR`)")
    return json.loads(path.read_text())


def rope_theta_of(c: dict, default: float) -> float:
    """``rope_theta`` from transformers 5's ``rope_parameters`` or 4's top-level key; refuses RoPE scaling."""
    params = c.get("rope_parameters") or {}
    scaling = c.get("rope_scaling") or {}
    kind = params.get("rope_type") or scaling.get("rope_type") or scaling.get("type") or "default"
    if kind != "default":
        raise HFFormatError(f"config.json has RoPE scaling {kind!r}; the model implements plain RoPE only "
                            "(drope_jax/model/positions.py)")
    return float(params.get("rope_theta", c.get("rope_theta", default)))


def _position_and_qk_norm(c: dict, model_type: str) -> tuple[str, str]:
    if model_type in ("llama", "qwen2"):
        return "rope", "none"
    if model_type == "smollm3":
        n = c["num_hidden_layers"]
        interval = c.get("no_rope_layer_interval", 4)
        flags = c.get("no_rope_layers") or [int((i + 1) % interval != 0) for i in range(n)]  # 1: RoPE layer
        return {frozenset([1]): "rope", frozenset([0]): "nope"}.get(frozenset(flags), "mixed"), "none"
    attention_type = c.get("attention_type", "nope")
    if attention_type not in ATTENTION_TYPES:
        raise HFFormatError(f"config.json attention_type={attention_type!r} is not supported; "
                            f"supported: {sorted(ATTENTION_TYPES)}")
    return ATTENTION_TYPES[attention_type]


def _refuse_unsupported(c: dict, model_type: str) -> None:
    def refuse(key, why):
        raise HFFormatError(f"config.json {key}={c.get(key)!r}: {why}")

    if c.get("hidden_act", "silu") != "silu":
        refuse("hidden_act", "the model's MLP is SwiGLU (silu)")
    if c.get("mlp_bias"):
        refuse("mlp_bias", "the model's MLP has no biases")
    if c.get("attention_bias") and not model_type.startswith("qwen2"):
        refuse("attention_bias", "the model has biases on q/k/v only (Qwen2), not on the output projection")
    head_dim = c.get("head_dim") or c["hidden_size"] // c["num_attention_heads"]
    if c.get("softmax_scale") is not None and abs(c["softmax_scale"] - head_dim**-0.5) > 1e-9:
        refuse("softmax_scale", f"the model's softmax scale is head_dim^-0.5 ({head_dim**-0.5:.6g})")
    if c.get("use_sliding_window") and "sliding_attention" in (c.get("layer_types") or ["sliding_attention"]):
        refuse("use_sliding_window", "the model has full causal attention in every layer")


def model_config_from_hf(c: dict) -> HFSource:
    """Our ModelConfig for a Hugging Face config (a dict of config.json), and its position mode."""
    model_type = c.get("model_type")
    if model_type not in FAMILIES:
        raise HFFormatError(f"config.json model_type={model_type!r} (architectures {c.get('architectures')}) is "
                            f"not supported; supported model_types: {supported_list()}")
    missing = [k for k in REQUIRED_KEYS if k not in c]
    if missing:
        raise HFFormatError(f"config.json lacks {missing}")
    defaults = FAMILIES[model_type][1]
    _refuse_unsupported(c, model_type)
    position, qk_norm = _position_and_qk_norm(c, model_type)
    d, n = c["hidden_size"], c["num_attention_heads"]
    head_dim = c.get("head_dim") or d // n
    model = ModelConfig(
        vocab_size=c["vocab_size"], d_model=d, num_layers=c["num_hidden_layers"], num_heads=n,
        num_kv_heads=c.get("num_key_value_heads") or n, mlp_dim=c["intermediate_size"],
        head_dim=0 if head_dim * n == d else head_dim,
        tie_embeddings=bool(c.get("tie_word_embeddings", defaults["tie_word_embeddings"])),
        attention_bias=model_type.startswith("qwen2"),
        rope_theta=rope_theta_of(c, defaults["rope_theta"]),
        norm_eps=float(c.get("rms_norm_eps", defaults["rms_norm_eps"])),
        qk_norm=qk_norm,
    ).validate()
    return HFSource(model=model, position=position, model_type=model_type, config=c)


def read_source(hf_dir) -> HFSource:
    return model_config_from_hf(read_config_json(hf_dir))


def model_fields(hf_dir) -> dict:
    """The ``config.model`` fields of a Hugging Face checkpoint, for run configs: ``c.model.update(...)``."""
    fields = read_source(hf_dir).model.to_dict()
    return {k: fields[k] for k in ModelConfig.names("shape", "math")}


def token_ids(hf_dir) -> dict:
    """bos/eos/pad ids from a checkpoint's generation_config.json, then config.json; absent ones omitted."""
    ids = {}
    for name in ("config.json", "generation_config.json"):
        path = paths.path(hf_dir) / name
        if path.is_file():
            c = json.loads(path.read_text())
            ids.update({k: c[k] for k in TOKEN_ID_KEYS if c.get(k) is not None})
    return ids


def export_kind(cfg: ModelConfig, position: str, qk_norm_active: bool,
                runtime_temperature: bool = False) -> tuple[str, str | None]:
    """(model_type, attention_type) for an export: stock architectures wherever one fits. A temperature
    applied at run time (``runtime_temperature``) needs our modelling file: the DroPE format."""
    if position not in ("rope", "nope"):
        raise HFFormatError(f"a checkpoint in phase {position!r} has no Hugging Face export: only all-RoPE "
                            "(Llama) and all-NoPE (SmolLM3 / DroPE) models export")
    qk = qk_norm_active and cfg.qk_norm != "none"
    if qk and cfg.qk_norm != "proj":
        raise HFFormatError(f"config.model.qk_norm={cfg.qk_norm!r} has no Hugging Face format; only 'proj' "
                            "(the official DroPE QK-norm) exports")
    base = "qwen2" if cfg.attention_bias else "llama"
    if qk:
        return f"{base}_drope", f"qk_norm_{position}"
    if position == "rope":
        return base, None
    if cfg.attention_bias or runtime_temperature:
        return f"{base}_drope", "nope"
    return "smollm3", None


ARCHITECTURES = {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM", "smollm3": "SmolLM3ForCausalLM",
                 "llama_drope": "DroPELlamaForCausalLM", "qwen2_drope": "DroPEQwen2ForCausalLM"}
REMOTE_CODE_MODULE = "modeling_drope"


def hf_config(cfg: ModelConfig, *, position: str, qk_norm_active: bool, dtype: str, ids: dict,
              max_position_embeddings: int = 2048, runtime_temperature: bool = False) -> dict:
    """config.json for an export. Both ``rope_theta`` (transformers 4) and ``rope_parameters`` (5) are written.
    ``runtime_temperature``: our modelling file will apply a temperature (``hf.temperature``), so no stock
    format."""
    model_type, attention_type = export_kind(cfg, position, qk_norm_active, runtime_temperature)
    n, layers = cfg.num_layers, ["full_attention"] * cfg.num_layers
    c = {
        "architectures": [ARCHITECTURES[model_type]], "model_type": model_type,
        "vocab_size": cfg.vocab_size, "hidden_size": cfg.d_model, "intermediate_size": cfg.mlp_dim,
        "num_hidden_layers": n, "num_attention_heads": cfg.num_heads, "num_key_value_heads": cfg.num_kv_heads,
        "head_dim": cfg.dim_per_head, "hidden_act": "silu", "rms_norm_eps": cfg.norm_eps,
        "rope_theta": cfg.rope_theta, "rope_parameters": {"rope_type": "default", "rope_theta": cfg.rope_theta},
        "max_position_embeddings": max_position_embeddings, "tie_word_embeddings": cfg.tie_embeddings,
        "attention_dropout": 0.0, "initializer_range": cfg.init_std, "use_cache": True, "dtype": dtype,
        **{k: ids.get(k) for k in TOKEN_ID_KEYS},
    }
    if model_type in ("llama", "llama_drope", "smollm3"):
        c.update(attention_bias=False, mlp_bias=False)
    if model_type.startswith("qwen2"):
        c.update(use_sliding_window=False, sliding_window=None, max_window_layers=n, layer_types=layers)
    if model_type == "smollm3":  # no_rope_layers: 1 is a RoPE layer, 0 a NoPE layer
        c.update(no_rope_layers=[0] * n, no_rope_layer_interval=4, use_sliding_window=False, sliding_window=None,
                 layer_types=layers)
    if attention_type is not None:
        prefix = "DroPEQwen2" if model_type == "qwen2_drope" else "DroPELlama"
        c.update(attention_type=attention_type, auto_map={
            "AutoConfig": f"{REMOTE_CODE_MODULE}.{prefix}Config",
            "AutoModelForCausalLM": f"{REMOTE_CODE_MODULE}.{prefix}ForCausalLM"})
    return c
