"""One table maps every Flax parameter to its Hugging Face tensor(s), used in both directions.

HF's ``nn.Linear`` stores ``[out, in]``; ours are ``[in, ...]`` with heads split out, so q/k/v/o need a
transpose and a reshape. Our RoPE already uses HF's rotate_half layout: no permutation of q/k rows.
Per-layer tensors (``{i}`` in the name) are stacked along the Flax parameter's leading layer axis.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Iterator

import numpy as np

from drope_jax import paths
from drope_jax.hf.configs import HFFormatError
from drope_jax.model.config import ModelConfig

LAYER = "model.layers.{i}."
IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)  # buffers some older checkpoints saved; recomputed, never loaded


@dataclasses.dataclass(frozen=True)
class Rule:
    flax: str  # path in the flattened parameter dict, "/"-separated
    hf: str  # tensor name; "{i}" marks a per-layer tensor
    hf_shape: tuple[int, ...]  # of one HF tensor
    to_flax: Callable[[np.ndarray], np.ndarray]  # one HF tensor -> one layer of the Flax parameter
    to_hf: Callable[[np.ndarray], np.ndarray]

    @property
    def per_layer(self) -> bool:
        return "{i}" in self.hf


def _transposed(flax, hf, shape):
    return Rule(flax, hf, shape, lambda w: w.T, lambda p: p.T)


def _heads_in(flax, hf, d, heads, h):
    """HF [heads*h, d] <-> Flax [d, heads, h] (q/k/v projections)."""
    return Rule(flax, hf, (heads * h, d), lambda w: w.T.reshape(d, heads, h), lambda p: p.reshape(d, heads * h).T)


def _same(flax, hf, shape, flax_shape=None):
    flax_shape = flax_shape or shape
    return Rule(flax, hf, shape, lambda w: w.reshape(flax_shape), lambda p: p.reshape(shape))


def rules(cfg: ModelConfig, *, qk_norm: bool = True) -> list[Rule]:
    """The mapping for ``cfg``. ``qk_norm=False`` leaves out QK-norm weights (absent, or not in use)."""
    d, n, k, h, f, v = cfg.d_model, cfg.num_heads, cfg.num_kv_heads, cfg.dim_per_head, cfg.mlp_dim, cfg.vocab_size
    a, m = LAYER + "self_attn.", LAYER + "mlp."
    out = [
        _same("embed_VD", "model.embed_tokens.weight", (v, d)),
        _same("final_norm/weight", "model.norm.weight", (d,)),
        _same("blocks/attn_norm/weight", LAYER + "input_layernorm.weight", (d,)),
        _same("blocks/mlp_norm/weight", LAYER + "post_attention_layernorm.weight", (d,)),
        _heads_in("blocks/attn/q_DNH", a + "q_proj.weight", d, n, h),
        _heads_in("blocks/attn/k_DKH", a + "k_proj.weight", d, k, h),
        _heads_in("blocks/attn/v_DKH", a + "v_proj.weight", d, k, h),
        Rule("blocks/attn/o_NHD", a + "o_proj.weight", (d, n * h),
             lambda w: w.T.reshape(n, h, d), lambda p: p.reshape(n * h, d).T),
        _transposed("blocks/mlp/gate_DF", m + "gate_proj.weight", (f, d)),
        _transposed("blocks/mlp/up_DF", m + "up_proj.weight", (f, d)),
        _transposed("blocks/mlp/down_FD", m + "down_proj.weight", (d, f)),
    ]
    if not cfg.tie_embeddings:
        out.append(_transposed("lm_head_DV", "lm_head.weight", (v, d)))
    if cfg.attention_bias:
        out += [_same("blocks/attn/q_bias_NH", a + "q_proj.bias", (n * h,), (n, h)),
                _same("blocks/attn/k_bias_KH", a + "k_proj.bias", (k * h,), (k, h)),
                _same("blocks/attn/v_bias_KH", a + "v_proj.bias", (k * h,), (k, h))]
    if qk_norm and cfg.qk_norm != "none":
        qn, kn = (n * h, k * h) if cfg.qk_norm == "proj" else (h, h)
        out += [_same("blocks/attn/q_norm/weight", a + "q_norm.weight", (qn,)),
                _same("blocks/attn/k_norm/weight", a + "k_norm.weight", (kn,))]
    return out


def hf_names(rule: Rule, num_layers: int) -> list[str]:
    return [rule.hf.format(i=i) for i in range(num_layers)] if rule.per_layer else [rule.hf]


class SafetensorsReader:
    """Lazy access to the tensors of a checkpoint directory: one model.safetensors, or shards with an index."""

    def __init__(self, hf_dir):
        from safetensors import safe_open  # imported here: only the bridge needs safetensors

        root = paths.local_copy(hf_dir)  # safetensors maps local files
        index = root / "model.safetensors.index.json"
        if index.is_file():
            weight_map = json.loads(index.read_text())["weight_map"]
            files = sorted(set(weight_map.values()))
        elif (root / "model.safetensors").is_file():
            files = ["model.safetensors"]
        else:
            raise HFFormatError(f"{root} has no model.safetensors or model.safetensors.index.json; re-save it with "
                                "transformers: AutoModelForCausalLM.from_pretrained(DIR).save_pretrained(NEW_DIR)")
        self._handles = {name: safe_open(root / name, framework="numpy") for name in files}
        self._where = {key: h for h in self._handles.values() for key in h.keys()}

    def names(self) -> set[str]:
        return set(self._where)

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self._where[name].get_slice(name).get_shape())

    def get(self, name: str) -> np.ndarray:
        return self._where[name].get_tensor(name)


def check_tensors(reader: SafetensorsReader, table: list[Rule], num_layers: int, tied: bool) -> None:
    """Every tensor the table needs is present with its shape, and no tensor would be dropped."""
    present = reader.names()
    needed = {name: r.hf_shape for r in table for name in hf_names(r, num_layers)}
    missing = sorted(set(needed) - present)
    if missing:
        raise HFFormatError(f"the checkpoint lacks {len(missing)} tensor(s) the model needs: {missing[:8]}"
                            f"{' ...' if len(missing) > 8 else ''}")
    wrong = [f"{name}: checkpoint {reader.shape(name)} vs expected {shape}"
             for name, shape in needed.items() if reader.shape(name) != shape]
    if wrong:
        raise HFFormatError(f"tensor shapes do not match config.json: {wrong[:8]}")
    ignorable = {"lm_head.weight"} if tied else set()  # tied: transformers ties it to the embedding
    unused = sorted(name for name in present - set(needed) - ignorable if not name.endswith(IGNORED_SUFFIXES))
    if unused:
        raise HFFormatError(f"the checkpoint has tensor(s) the model has no place for: {unused[:8]}; "
                            "check config.json against the weights")


def read_param(reader: SafetensorsReader, rule: Rule, num_layers: int, dtype) -> np.ndarray:
    """One Flax parameter, assembled on the host from its HF tensor(s)."""
    parts = [rule.to_flax(reader.get(name)).astype(dtype) for name in hf_names(rule, num_layers)]
    return np.stack(parts) if rule.per_layer else parts[0]


def hf_tensors(flat_params: dict, table: list[Rule], num_layers: int, dtype) -> Iterator[tuple[str, np.ndarray]]:
    """(name, array) of every HF tensor, one Flax parameter fetched to the host at a time."""
    for rule in table:
        p = np.asarray(flat_params[rule.flax])
        layers = p if rule.per_layer else [p]
        for name, layer in zip(hf_names(rule, num_layers), layers):
            yield name, np.ascontiguousarray(rule.to_hf(layer)).astype(dtype)
