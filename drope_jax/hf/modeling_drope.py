"""DroPE models for transformers, shipped by drope-jax inside exported checkpoints.

Loaded through config.json's ``auto_map`` with ``from_pretrained(DIR, trust_remote_code=True)``. A Llama or
Qwen2 model whose ``attention_type`` says how attention sees positions:

- "nope": RoPE is dropped in every layer (the identity rotation, cos=1 and sin=0, as the official recipe);
- "qk_norm_nope": also an RMSNorm with a learned weight over the whole q (and k) projection, applied
  before the split into heads (tensors ``self_attn.q_norm.weight`` [heads*head_dim], ``k_norm.weight``);
- "qk_norm_rope": that QK-norm with RoPE kept (a drope-jax QK-norm model exported before its flip).

With ``temperature_c`` > 0 in the config, the DroPE paper's softmax temperature past the context: every
attention logit times 1 + c ln(s), s the input's length (cached tokens included) over
``temperature_train_length``, when s > 1. In generation s grows with every new token; it multiplies the new
queries only.

This file stands alone: it imports only torch and transformers.
"""

import math

import torch
from torch import nn
from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM
from transformers.models.llama.modeling_llama import LlamaRMSNorm

ATTENTION_TYPES = ("nope", "qk_norm_nope", "qk_norm_rope")


class IdentityRotary(nn.Module):
    """Stands in for the model's rotary embedding: cos=1 and sin=0, so every layer's rotation is the identity."""

    def __init__(self, head_dim):
        super().__init__()
        self.head_dim = head_dim

    def forward(self, x, position_ids):
        shape = (*position_ids.shape, self.head_dim)
        return (torch.ones(shape, dtype=x.dtype, device=x.device),
                torch.zeros(shape, dtype=x.dtype, device=x.device))


def _add_qk_norm(attn, config, head_dim):
    attn.q_norm = LlamaRMSNorm(config.num_attention_heads * head_dim, eps=config.rms_norm_eps)
    attn.k_norm = LlamaRMSNorm(config.num_key_value_heads * head_dim, eps=config.rms_norm_eps)
    # A forward hook's return value replaces the module's output: q = q_norm(q_proj(x)), before the head split.
    attn.q_proj.register_forward_hook(lambda _module, _inputs, q: attn.q_norm(q))
    attn.k_proj.register_forward_hook(lambda _module, _inputs, k: attn.k_norm(k))


def _add_temperature(model, config, head_dim):
    c, train_length = getattr(config, "temperature_c", 0.0) or 0.0, getattr(config, "temperature_train_length", 0)
    if not c:
        return

    def set_scaling(decoder, args, kwargs):  # reads the module it runs on: a deep copy of the model works too
        new = kwargs.get("input_ids") if kwargs.get("input_ids") is not None else kwargs.get("inputs_embeds")
        new = args[0] if new is None else new
        cache = kwargs.get("past_key_values")
        s = (new.shape[1] + (cache.get_seq_length() if cache is not None else 0)) / train_length
        beta = 1.0 + c * math.log(s) if s > 1 else 1.0
        for layer in decoder.layers:
            layer.self_attn.scaling = head_dim**-0.5 * beta

    model.model.register_forward_pre_hook(set_scaling, with_kwargs=True)


def _apply_drope(model, config):
    attention_type = getattr(config, "attention_type", "nope")
    if attention_type not in ATTENTION_TYPES:
        raise ValueError(f"attention_type={attention_type!r} is not supported; choose one of {ATTENTION_TYPES}")
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    if attention_type.endswith("nope"):
        model.model.rotary_emb = IdentityRotary(head_dim)
    if attention_type.startswith("qk_norm"):
        for layer in model.model.layers:
            _add_qk_norm(layer.self_attn, config, head_dim)
    _add_temperature(model, config, head_dim)


class DroPELlamaConfig(LlamaConfig):
    model_type = "llama_drope"


class DroPELlamaForCausalLM(LlamaForCausalLM):
    config_class = DroPELlamaConfig

    def __init__(self, config):
        super().__init__(config)
        _apply_drope(self, config)


class DroPEQwen2Config(Qwen2Config):
    model_type = "qwen2_drope"


class DroPEQwen2ForCausalLM(Qwen2ForCausalLM):
    config_class = DroPEQwen2Config

    def __init__(self, config):
        super().__init__(config)
        _apply_drope(self, config)
