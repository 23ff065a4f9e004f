"""A Llama-style decoder in Flax NNX whose position encoding is an argument of the forward pass.

``model(tokens_BT, pos=ROPE)`` and ``model(tokens_BT, pos=NOPE)`` use the same parameters.
Layers are stacked along a leading ``layers`` axis and run with ``jax.lax.scan``; a per-layer
position pattern (``PosEncoding.nope_every``) enters the scan as a [L] bool array. With a KV cache
(``drope_jax.eval.decode``) the call also returns the updated cache.
Shape suffixes: B batch, T sequence, S cached keys, L layers, D d_model, N query heads, K kv heads,
H head_dim, F mlp_dim, V vocab.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from drope_jax.model.attention import causal_attention
from drope_jax.model.config import REMAT_POLICIES, ModelConfig
from drope_jax.model.mlp_kernels import swiglu
from drope_jax.model.norm_kernels import add_norm, rmsnorm, uses_kernel
from drope_jax.model.positions import ROPE, PosEncoding, alibi_slopes, encode, query_scale
from drope_jax.sharding import constrain

_RESIDUAL = ("batch", "seq", "act_embed")


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
        self.backend = cfg.norm_backend

    def __call__(self, x):
        return rmsnorm(x, self.weight[...], self.eps)

    def add_and_norm(self, x_BTD, delta_BTD, copies: int):
        """(x + delta, ``copies`` references to this norm of it): norm_kernels.add_norm."""
        return add_norm(x_BTD, delta_BTD, self.weight[...], self.eps, copies, self.backend)


def per_product(x, count: int):
    """One input per matrix product: ``x`` itself if it is already such a tuple (add_and_norm's copies)."""
    return x if isinstance(x, tuple) else (x,) * count


class Attention(nnx.Module):
    @property
    def fused_qkv(self) -> bool:
        """Query, key and value as one matrix product, their weights concatenated on the fly, wherever the norm's
        kernel runs (with "auto", a single GPU): its backward then reads one input gradient, not three, and the two
        thin key and value products join the query's. In paired rounds on one H200 that saved 0.3 to 1.0 ms a step
        in all but one comparison since 2026-12-04 (that one cost 0.2 ms; docs/performance.md). Without the kernel
        (by default on CPU, TPU and meshes of several devices) the three stay apart, so that sharded weights are
        not concatenated."""
        return uses_kernel(self.cfg.norm_backend)

    @property
    def input_copies(self) -> int:
        """Matrix products that read the input: norm_kernels.add_norm's copies."""
        return 1 if self.fused_qkv else 3

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

    def _project_qkv(self, x_BTD):
        project = self._project_qkv_fused if self.fused_qkv else self._project_qkv_separate
        q_BTNH, k_BTKH, v_BTKH = project(*per_product(x_BTD, self.input_copies))
        dt = q_BTNH.dtype
        if self.cfg.attention_bias:
            q_BTNH = q_BTNH + self.q_bias_NH[...].astype(dt)
            k_BTKH = k_BTKH + self.k_bias_KH[...].astype(dt)
            v_BTKH = v_BTKH + self.v_bias_KH[...].astype(dt)
        return q_BTNH, k_BTKH, v_BTKH

    def _project_qkv_separate(self, xq_BTD, xk_BTD, xv_BTD):
        dt = xq_BTD.dtype
        return (jnp.einsum("BTD,DNH->BTNH", xq_BTD, self.q_DNH[...].astype(dt)),
                jnp.einsum("BTD,DKH->BTKH", xk_BTD, self.k_DKH[...].astype(dt)),
                jnp.einsum("BTD,DKH->BTKH", xv_BTD, self.v_DKH[...].astype(dt)))

    def _project_qkv_fused(self, x_BTD):
        d, n, h = self.q_DNH.shape
        k = self.k_DKH.shape[1]
        qkv_DC = jnp.concatenate([self.q_DNH[...].reshape(d, n * h), self.k_DKH[...].reshape(d, k * h),
                                  self.v_DKH[...].reshape(d, k * h)], axis=1).astype(x_BTD.dtype)
        q_BTC, k_BTC, v_BTC = jnp.split(jnp.einsum("BTD,DC->BTC", x_BTD, qkv_DC), [n * h, (n + k) * h], axis=-1)
        b, t = x_BTD.shape[:2]
        return q_BTC.reshape(b, t, n, h), k_BTC.reshape(b, t, k, h), v_BTC.reshape(b, t, k, h)

    def _qk_norm(self, norm: RMSNorm, x_BTNH):
        if self.cfg.qk_norm == "head":
            return norm(x_BTNH)
        b, t, n, h = x_BTNH.shape  # "proj": one norm over all heads, before the split
        return norm(x_BTNH.reshape(b, t, n * h)).reshape(b, t, n, h)

    def __call__(self, x_BTD, positions_BT, segment_ids_BT, pos: PosEncoding, use_qk_norm: bool, positional=True,
                 kv_cache=None, query_chunk=None, pos_table=None):
        """``positional``: whether this layer applies ``pos.kind`` (a bool, or traced under the scan).
        ``kv_cache``: (k_LBSKH, v_LBSKH, layer, index): this call's keys and values are written into layer
        ``layer`` at ``index`` and the queries attend to that layer's whole cache (to their own keys when
        ``index`` is the Python int 0, a prefill); the updated (k, v) is returned beside the output."""
        q_BTNH, k_BTKH, v_BTKH = self._project_qkv(x_BTD)
        dt = q_BTNH.dtype
        if use_qk_norm and self.cfg.qk_norm != "none":
            q_BTNH, k_BTKH = self._qk_norm(self.q_norm, q_BTNH), self._qk_norm(self.k_norm, k_BTKH)
        theta = self.cfg.rope_theta
        q_BTNH = encode(pos, q_BTNH, positions_BT, theta, positional, pos_table)
        scale_BT = query_scale(pos, positions_BT, pos_table)
        if scale_BT is not None:
            q_BTNH = (q_BTNH * jnp.asarray(scale_BT, jnp.float32)[..., None, None]).astype(dt)
        q_BTNH = constrain(q_BTNH, ("batch", "seq", "act_heads", None))
        k_BSKH = constrain(encode(pos, k_BTKH, positions_BT, theta, positional, pos_table),
                           ("batch", "seq", "act_kv_heads", None))
        v_BSKH, q_offset, new_cache = v_BTKH, None, None
        if kv_cache is not None:
            # Every layer's cache [L, B, S, K, H] rides in the layer scan's carry, so this layer's new keys
            # are written in place: no copy of the cache per decoded token.
            k_LBSKH, v_LBSKH, layer, index = kv_cache
            at = (layer, 0, index, 0, 0)
            new_cache = (jax.lax.dynamic_update_slice(k_LBSKH, k_BSKH[None].astype(k_LBSKH.dtype), at),
                         jax.lax.dynamic_update_slice(v_LBSKH, v_BSKH[None].astype(v_LBSKH.dtype), at))
            # A prefill (index the Python int 0) sees only its own keys: self-attention, fused where the
            # platform has a kernel, with no T x S scores. Later calls attend to the layer's whole cache.
            if not (isinstance(index, int) and index == 0):
                k_BSKH, v_BSKH = (jax.lax.dynamic_index_in_dim(c, layer, keepdims=False) for c in new_cache)
                q_offset = index
        out_BTNH = self._attend(q_BTNH, k_BSKH.astype(dt), v_BSKH.astype(dt), segment_ids_BT, pos, positional,
                                q_offset, query_chunk)
        out_BTD = jnp.einsum("BTNH,NHD->BTD", out_BTNH, self.o_NHD[...].astype(dt))
        return out_BTD, new_cache

    def _attend(self, q_BTNH, k_BSKH, v_BSKH, segment_ids_BT, pos, positional, q_offset, query_chunk):
        slopes_N = None
        if pos.kind == "alibi":  # zero slopes in the NoPE layers of a pattern: no bias there
            slopes_N = alibi_slopes(self.cfg.num_heads) * (1.0 if positional is True else jnp.float32(positional))

        def attend(window):
            return causal_attention(q_BTNH, k_BSKH, v_BSKH, segment_ids_BT, self.cfg.attention_backend,
                                    window=window, alibi_slopes_N=slopes_N, q_offset=q_offset,
                                    query_chunk=query_chunk)

        if not pos.window:
            return attend(None)
        if isinstance(positional, bool):
            return attend(pos.window if positional else None)
        # The window is a static argument of attention: the scanned flag picks one of two calls.
        return jax.lax.cond(positional, lambda: attend(pos.window), lambda: attend(None))


class MLP(nnx.Module):
    input_copies = 2  # gate, up

    def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
        self.cfg = cfg
        d, f = cfg.d_model, cfg.mlp_dim
        self.gate_DF = _param(rngs, (d, f), ("embed", "mlp"), cfg)
        self.up_DF = _param(rngs, (d, f), ("embed", "mlp"), cfg)
        self.down_FD = _param(rngs, (f, d), ("mlp", "embed"), cfg)

    def __call__(self, x_BTD):
        x_gate_BTD, x_up_BTD = per_product(x_BTD, self.input_copies)
        dt = x_gate_BTD.dtype
        gate_BTF = jnp.einsum("BTD,DF->BTF", x_gate_BTD, self.gate_DF[...].astype(dt))
        up_BTF = jnp.einsum("BTD,DF->BTF", x_up_BTD, self.up_DF[...].astype(dt))
        h_BTF = constrain(swiglu(gate_BTF, up_BTF, self.cfg.mlp_backend), ("batch", "seq", "act_mlp"))
        return jnp.einsum("BTF,FD->BTD", h_BTF, self.down_FD[...].astype(dt))


class Block(nnx.Module):
    def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
        self.attn_norm = RMSNorm(cfg.d_model, cfg, rngs)
        self.attn = Attention(cfg, rngs)
        self.mlp_norm = RMSNorm(cfg.d_model, cfg, rngs)
        self.mlp = MLP(cfg, rngs)

    def __call__(self, x_BTD, delta_BTD, positions_BT, segment_ids_BT, pos: PosEncoding, use_qk_norm: bool,
                 positional=True, kv_cache=None, query_chunk=None, pos_table=None):
        """With norm_kernels' kernel, the residual stream arrives as x + delta, the previous block's output not
        yet added, and leaves the same way, so that each residual add is one op with the norm after it
        (norm_kernels.add_norm). Without it, delta is None: x is the stream, as remat saves it. Returns
        (x, delta, the updated kv cache)."""
        with jax.named_scope("attention"):  # the scopes name a profile's kernels (bench/profile_summary.py)
            x_BTD, normed = self.attn_norm.add_and_norm(x_BTD, delta_BTD, self.attn.input_copies)
            attn_BTD, new_kv = self.attn(normed, positions_BT, segment_ids_BT, pos, use_qk_norm, positional,
                                         kv_cache, query_chunk, pos_table)
        with jax.named_scope("mlp"):
            x_BTD, normed = self.mlp_norm.add_and_norm(x_BTD, attn_BTD, self.mlp.input_copies)
            mlp_BTD = self.mlp(normed)
        if delta_BTD is None:
            return constrain(x_BTD + mlp_BTD, _RESIDUAL), None, new_kv
        return constrain(x_BTD, _RESIDUAL), constrain(mlp_BTD, _RESIDUAL), new_kv


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
                 use_qk_norm: bool = True, cache: dict | None = None, query_chunk: int | None = None,
                 pos_table=None):
        """Logits [B, T, V] in the compute dtype; with ``cache``, (logits, updated cache).

        ``positions_BT`` defaults to 0..T-1 in every row (with a cache: from its length on);
        ``segment_ids_BT`` confines attention to each packed document. ``use_qk_norm=False`` skips
        QK-norm weights that exist but are not yet switched on (a run that adds QK-norm at the flip).
        ``cache`` is ``{"k": [L, B, S, K, H], "v": [L, B, S, K, H], "length": int32}`` (see
        ``drope_jax.eval.decode``); a length of the Python int 0 marks a prefill into an empty cache.
        ``query_chunk`` bounds attention memory for long inputs (see attention.py).
        ``pos_table``: RoPE's frequencies and the logit scale as data (``positions.as_data``), so scalings and
        temperatures share a program."""
        cfg = self.cfg
        dt = jnp.dtype(cfg.compute_dtype)
        start = 0 if cache is None else cache["length"]
        if positions_BT is None:
            positions_BT = jnp.broadcast_to(start + jnp.arange(tokens_BT.shape[1]), tokens_BT.shape)
        # Gather the table's fsdp shards first, as for every other weight, then look rows up per batch shard.
        embed_VD = constrain(self.embed_VD[...], ("vocab", None))
        x_BTD = constrain(jnp.take(embed_VD, tokens_BT, axis=0).astype(dt), ("batch", "seq", "act_embed"))

        graphdef, layers = nnx.split(self.blocks)
        positional_L = pos.positional_layers(cfg.num_layers)
        uniform = bool(positional_L.all() or not positional_L.any())
        xs = {"layer": layers}
        if not uniform:  # a per-layer pattern enters the scan; a uniform one stays a Python constant
            xs["positional"] = jnp.asarray(positional_L)
        if cache is not None:
            xs["index"] = jnp.arange(cfg.num_layers)

        def layer(carry, xs):
            x_BTD, delta_BTD, kv = carry
            kv_cache = None if kv is None else (*kv, xs["index"], start)
            positional = xs["positional"] if not uniform else bool(positional_L[0])
            x_BTD, delta_BTD, kv = nnx.merge(graphdef, xs["layer"])(
                x_BTD, delta_BTD, positions_BT, segment_ids_BT, pos, use_qk_norm, positional, kv_cache, query_chunk,
                pos_table)
            return (x_BTD, delta_BTD, kv), None

        if cfg.remat != "none":
            layer = jax.checkpoint(layer, policy=getattr(jax.checkpoint_policies, REMAT_POLICIES[cfg.remat]),
                                   prevent_cse=False)
        kv = None if cache is None else (cache["k"], cache["v"])
        delta_BTD = constrain(jnp.zeros_like(x_BTD), _RESIDUAL) if uses_kernel(cfg.norm_backend) else None
        carry = (x_BTD, delta_BTD, kv)
        (x_BTD, delta_BTD, new_kv), _ = jax.lax.scan(layer, carry, xs, unroll=cfg.scan_unroll)

        with jax.named_scope("lm_head"):
            _, (x_BTD,) = self.final_norm.add_and_norm(x_BTD, delta_BTD, 1)
            head_DV = self.embed_VD[...].T if cfg.tie_embeddings else self.lm_head_DV[...]
            logits_BTV = constrain(jnp.einsum("BTD,DV->BTV", x_BTD, head_DV.astype(dt)),
                                   ("batch", "seq", "act_vocab"))
        if cache is None:
            return logits_BTV
        return logits_BTV, {"k": new_kv[0], "v": new_kv[1], "length": start + tokens_BT.shape[1]}
