"""A Llama-style decoder in Flax NNX whose position encoding is an argument of the forward pass.

``model(tokens_BT, pos=ROPE)`` and ``model(tokens_BT, pos=NOPE)`` use the same parameters.
Layers are stacked along a leading ``layers`` axis and run with ``jax.lax.scan``.
Shape suffixes: B batch, T sequence, D d_model, N query heads, K kv heads, H head_dim,
F mlp_dim, V vocab.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from drope_jax.attention import causal_attention
from drope_jax.model_config import ModelConfig
from drope_jax.positions import ROPE, PosEncoding, encode
from drope_jax.sharding import constrain

REMAT = {
    "full": jax.checkpoint_policies.nothing_saveable,
    "dots": jax.checkpoint_policies.dots_saveable,
    "dots_no_batch": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


def _param(rngs, shape, names, cfg: ModelConfig, init: str = "normal"):
    """A parameter with logical axis names; "normal" draws N(0, init_std), "ones"/"zeros" are constant."""
    dtype = jnp.dtype(cfg.param_dtype)
    if init == "normal":
        value = cfg.init_std * jax.random.normal(rngs.params(), shape, dtype)
    else:
        value = (jnp.ones if init == "ones" else jnp.zeros)(shape, dtype)
    return nnx.Param(value, out_sharding=names)


class RMSNorm(nnx.Module):
    def __init__(self, dim: int, cfg: ModelConfig, rngs: nnx.Rngs):
        self.weight = _param(rngs, (dim,), ("norm",), cfg, "ones")
        self.eps = cfg.norm_eps

    def __call__(self, x):
        x32 = x.astype(jnp.float32)
        normed = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
        return (normed * self.weight[...]).astype(x.dtype)


class Attention(nnx.Module):
    def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
        d, n, k, h = cfg.d_model, cfg.num_heads, cfg.num_kv_heads, cfg.dim_per_head
        self.cfg = cfg
        self.q_DNH = _param(rngs, (d, n, h), ("embed", "heads", "head_dim"), cfg)
        self.k_DKH = _param(rngs, (d, k, h), ("embed", "kv_heads", "head_dim"), cfg)
        self.v_DKH = _param(rngs, (d, k, h), ("embed", "kv_heads", "head_dim"), cfg)
        self.o_NHD = _param(rngs, (n, h, d), ("heads", "head_dim", "embed"), cfg)
        if cfg.attention_bias:
            self.q_bias_NH = _param(rngs, (n, h), ("heads", "head_dim"), cfg, "zeros")
            self.k_bias_KH = _param(rngs, (k, h), ("kv_heads", "head_dim"), cfg, "zeros")
            self.v_bias_KH = _param(rngs, (k, h), ("kv_heads", "head_dim"), cfg, "zeros")
        if cfg.qk_norm == "proj":
            self.q_norm, self.k_norm = RMSNorm(n * h, cfg, rngs), RMSNorm(k * h, cfg, rngs)
        elif cfg.qk_norm == "head":
            self.q_norm, self.k_norm = RMSNorm(h, cfg, rngs), RMSNorm(h, cfg, rngs)

    def _qk_norm(self, norm: RMSNorm, x_BTNH):
        if self.cfg.qk_norm == "head":
            return norm(x_BTNH)
        b, t, n, h = x_BTNH.shape  # "proj": one norm over all heads, before the split
        return norm(x_BTNH.reshape(b, t, n * h)).reshape(b, t, n, h)

    def __call__(self, x_BTD, positions_BT, segment_ids_BT, pos: PosEncoding, use_qk_norm: bool):
        dt = x_BTD.dtype
        q_BTNH = jnp.einsum("BTD,DNH->BTNH", x_BTD, self.q_DNH[...].astype(dt))
        k_BTKH = jnp.einsum("BTD,DKH->BTKH", x_BTD, self.k_DKH[...].astype(dt))
        v_BTKH = jnp.einsum("BTD,DKH->BTKH", x_BTD, self.v_DKH[...].astype(dt))
        if self.cfg.attention_bias:
            q_BTNH = q_BTNH + self.q_bias_NH[...].astype(dt)
            k_BTKH = k_BTKH + self.k_bias_KH[...].astype(dt)
            v_BTKH = v_BTKH + self.v_bias_KH[...].astype(dt)
        if use_qk_norm and self.cfg.qk_norm != "none":
            q_BTNH, k_BTKH = self._qk_norm(self.q_norm, q_BTNH), self._qk_norm(self.k_norm, k_BTKH)
        q_BTNH = constrain(encode(pos, q_BTNH, positions_BT, self.cfg.rope_theta), ("batch", "seq", "act_heads", None))
        k_BTKH = constrain(encode(pos, k_BTKH, positions_BT, self.cfg.rope_theta), ("batch", "seq", "act_kv_heads", None))
        out_BTNH = causal_attention(q_BTNH, k_BTKH, v_BTKH, segment_ids_BT)
        return jnp.einsum("BTNH,NHD->BTD", out_BTNH, self.o_NHD[...].astype(dt))


class MLP(nnx.Module):
    def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
        d, f = cfg.d_model, cfg.mlp_dim
        self.gate_DF = _param(rngs, (d, f), ("embed", "mlp"), cfg)
        self.up_DF = _param(rngs, (d, f), ("embed", "mlp"), cfg)
        self.down_FD = _param(rngs, (f, d), ("mlp", "embed"), cfg)

    def __call__(self, x_BTD):
        dt = x_BTD.dtype
        gate_BTF = jnp.einsum("BTD,DF->BTF", x_BTD, self.gate_DF[...].astype(dt))
        up_BTF = jnp.einsum("BTD,DF->BTF", x_BTD, self.up_DF[...].astype(dt))
        h_BTF = constrain(jax.nn.silu(gate_BTF) * up_BTF, ("batch", "seq", "act_mlp"))
        return jnp.einsum("BTF,FD->BTD", h_BTF, self.down_FD[...].astype(dt))


class Block(nnx.Module):
    def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
        self.attn_norm = RMSNorm(cfg.d_model, cfg, rngs)
        self.attn = Attention(cfg, rngs)
        self.mlp_norm = RMSNorm(cfg.d_model, cfg, rngs)
        self.mlp = MLP(cfg, rngs)

    def __call__(self, x_BTD, positions_BT, segment_ids_BT, pos: PosEncoding, use_qk_norm: bool):
        x_BTD = x_BTD + self.attn(self.attn_norm(x_BTD), positions_BT, segment_ids_BT, pos, use_qk_norm)
        x_BTD = x_BTD + self.mlp(self.mlp_norm(x_BTD))
        return constrain(x_BTD, ("batch", "seq", "act_embed"))


class Transformer(nnx.Module):
    def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
        self.cfg = cfg
        self.embed_VD = _param(rngs, (cfg.vocab_size, cfg.d_model), ("vocab", "embed"), cfg)

        @nnx.split_rngs(splits=cfg.num_layers)
        @nnx.vmap(in_axes=(0,), out_axes=0, transform_metadata={nnx.PARTITION_NAME: "layers"})
        def stacked_blocks(rngs):
            return Block(cfg, rngs)

        self.blocks = stacked_blocks(rngs)
        self.final_norm = RMSNorm(cfg.d_model, cfg, rngs)
        if not cfg.tie_embeddings:
            self.lm_head_DV = _param(rngs, (cfg.d_model, cfg.vocab_size), ("embed", "vocab"), cfg)

    def __call__(self, tokens_BT, pos: PosEncoding = ROPE, *, positions_BT=None, segment_ids_BT=None,
                 use_qk_norm: bool = True):
        """Logits [B, T, V] in the compute dtype.

        ``positions_BT`` defaults to 0..T-1 in every row; ``segment_ids_BT`` confines attention to each
        packed document. ``use_qk_norm=False`` skips QK-norm weights that exist but are not yet
        switched on (a run that adds QK-norm at the flip)."""
        cfg = self.cfg
        dt = jnp.dtype(cfg.compute_dtype)
        if positions_BT is None:
            positions_BT = jnp.broadcast_to(jnp.arange(tokens_BT.shape[1]), tokens_BT.shape)
        # Gather the table's fsdp shards first, as for every other weight, then look rows up per batch shard.
        embed_VD = constrain(self.embed_VD[...], ("vocab", None))
        x_BTD = constrain(jnp.take(embed_VD, tokens_BT, axis=0).astype(dt), ("batch", "seq", "act_embed"))

        graphdef, layers = nnx.split(self.blocks)

        def layer(x_BTD, layer_state):
            return nnx.merge(graphdef, layer_state)(x_BTD, positions_BT, segment_ids_BT, pos, use_qk_norm), None

        if cfg.remat != "none":
            layer = jax.checkpoint(layer, policy=REMAT[cfg.remat], prevent_cse=False)
        x_BTD, _ = jax.lax.scan(layer, x_BTD, layers)

        x_BTD = self.final_norm(x_BTD)
        head_DV = self.embed_VD[...].T if cfg.tie_embeddings else self.lm_head_DV[...]
        return constrain(jnp.einsum("BTD,DV->BTV", x_BTD, head_DV.astype(dt)), ("batch", "seq", "act_vocab"))
