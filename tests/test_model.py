"""Model properties: RoPE is relative, NoPE is causal attention with no position signal, one set of
parameters serves both modes, and the parameter count matches the config's arithmetic."""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from drope_jax import sharding
from drope_jax.errors import ConfigError
from drope_jax.model import loss, state
from drope_jax.model.config import ModelConfig
from drope_jax.model.positions import NOPE, ROPE, apply_rope, rope_inv_freq

SMALL = ModelConfig(vocab_size=61, d_model=32, num_layers=2, num_heads=4, num_kv_heads=2, mlp_dim=64,
                    compute_dtype="float32")
FULL = dataclasses.replace(SMALL, qk_norm="proj", attention_bias=True)
B, T = 2, 16


def small(**kw) -> ModelConfig:
    return dataclasses.replace(SMALL, **kw).validate()


@functools.cache
def spec_of(cfg: ModelConfig) -> state.ModelSpec:
    return state.model_spec(cfg)


@functools.cache
def initial_params() -> dict:
    """``state.init_params`` for FULL (SMALL with 'proj' QK-norm and attention biases), as numpy. Compiled
    once: the random initialiser takes seconds to compile on CPU, so other configs are derived from it."""
    mesh = sharding.make_mesh(devices=jax.devices()[:1])
    return jax.tree.map(np.asarray, state.init_params(spec_of(FULL), 0, mesh))


def make_params(cfg: ModelConfig, seed: int = 0) -> dict:
    """Parameters for ``cfg`` (a variant of SMALL in layers, qk_norm, biases or tying), from
    ``initial_params``. Norm weights (1 at init) and biases (0 at init) are made random, so a test sees
    whether each one is applied where it should be."""
    p = jax.tree.map(lambda x: x.copy(), initial_params())
    p["blocks"] = jax.tree.map(lambda x: x[: cfg.num_layers], p["blocks"])
    attn = p["blocks"]["attn"]
    if cfg.qk_norm == "none":
        del attn["q_norm"], attn["k_norm"]
    elif cfg.qk_norm == "head":
        attn["q_norm"]["weight"] = attn["k_norm"]["weight"] = np.ones((cfg.num_layers, cfg.dim_per_head), np.float32)
    if not cfg.attention_bias:
        del attn["q_bias_NH"], attn["k_bias_KH"], attn["v_bias_KH"]
    if cfg.tie_embeddings:
        del p["lm_head_DV"]
    rng = np.random.default_rng(seed)

    def perturb(path, x):
        if "norm" in jax.tree_util.keystr(path):
            return (1.0 + 0.5 * rng.standard_normal(x.shape)).astype(x.dtype)
        if "bias" in jax.tree_util.keystr(path):
            return (0.3 * rng.standard_normal(x.shape)).astype(x.dtype)
        return x

    p = jax.tree_util.tree_map_with_path(perturb, p)
    want = jax.tree.map(lambda x: (x.shape, x.dtype), spec_of(cfg).abstract_params)
    assert jax.tree.map(lambda x: (x.shape, x.dtype), p) == want, "test helper out of step with the model"
    return p


@functools.cache
def _jitted_forward(cfg, pos, use_qk_norm):
    spec = spec_of(cfg)
    return jax.jit(lambda p, t: state.apply(spec, p, t, pos, use_qk_norm=use_qk_norm))


def forward(cfg, params, tokens, pos, use_qk_norm=True):
    """Logits as numpy; one compilation per (config, mode), shared by every test in this file."""
    return np.asarray(_jitted_forward(cfg, pos, use_qk_norm)(params, tokens))


def tokens_for(seed=0, b=B, t=T, vocab=SMALL.vocab_size):
    return jnp.asarray(np.random.default_rng(seed).integers(0, vocab, (b, t)), jnp.int32)


# ---------------------------------------------------------------------------------------------
# A reference forward in plain numpy, written from the Llama recipe rather than from model.py.


def _rms(x, w, eps):
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * w


def _hf_rope(x_BTNH, theta):
    """Hugging Face Llama: emb = cat(freqs, freqs); x * cos + rotate_half(x) * sin."""
    h = x_BTNH.shape[-1]
    inv_freq = 1.0 / (theta ** (np.arange(0, h, 2, dtype=np.float64) / h))
    freqs = np.arange(x_BTNH.shape[1])[:, None] * inv_freq[None, :]
    emb = np.concatenate([freqs, freqs], axis=-1)
    cos, sin = np.cos(emb)[None, :, None, :], np.sin(emb)[None, :, None, :]
    x1, x2 = x_BTNH[..., : h // 2], x_BTNH[..., h // 2:]
    return x_BTNH * cos + np.concatenate([-x2, x1], axis=-1) * sin


def reference_forward(cfg, params, tokens, rope: bool, use_qk_norm: bool = True):
    p = jax.tree.map(lambda a: np.asarray(a, np.float64), params)
    n, k, h, eps = cfg.num_heads, cfg.num_kv_heads, cfg.dim_per_head, cfg.norm_eps
    x = p["embed_VD"][np.asarray(tokens)]
    b, t, _ = x.shape
    mask = np.tril(np.ones((t, t), bool))
    for layer in range(cfg.num_layers):
        lp = jax.tree.map(lambda a, layer=layer: a[layer], p["blocks"])
        a = lp["attn"]
        y = _rms(x, lp["attn_norm"]["weight"], eps)
        q = np.einsum("btd,dnh->btnh", y, a["q_DNH"])
        kk = np.einsum("btd,dkh->btkh", y, a["k_DKH"])
        v = np.einsum("btd,dkh->btkh", y, a["v_DKH"])
        if cfg.attention_bias:
            q, kk, v = q + a["q_bias_NH"], kk + a["k_bias_KH"], v + a["v_bias_KH"]
        if use_qk_norm and cfg.qk_norm == "proj":  # one norm over the whole projection
            q = _rms(q.reshape(b, t, n * h), a["q_norm"]["weight"], eps).reshape(b, t, n, h)
            kk = _rms(kk.reshape(b, t, k * h), a["k_norm"]["weight"], eps).reshape(b, t, k, h)
        elif use_qk_norm and cfg.qk_norm == "head":
            q, kk = _rms(q, a["q_norm"]["weight"], eps), _rms(kk, a["k_norm"]["weight"], eps)
        if rope:
            q, kk = _hf_rope(q, cfg.rope_theta), _hf_rope(kk, cfg.rope_theta)
        kk, v = np.repeat(kk, n // k, axis=2), np.repeat(v, n // k, axis=2)  # HF repeat_kv
        s = np.einsum("bqnh,bsnh->bnqs", q, kk) * h ** -0.5
        s = np.where(mask, s, -np.inf)
        w = np.exp(s - s.max(-1, keepdims=True))
        w /= w.sum(-1, keepdims=True)
        o = np.einsum("bnqs,bsnh->bqnh", w, v)
        x = x + np.einsum("btnh,nhd->btd", o, a["o_NHD"])
        y = _rms(x, lp["mlp_norm"]["weight"], eps)
        g, u = y @ lp["mlp"]["gate_DF"], y @ lp["mlp"]["up_DF"]
        x = x + (g / (1 + np.exp(-g)) * u) @ lp["mlp"]["down_FD"]
    x = _rms(x, p["final_norm"]["weight"], eps)
    head = p["embed_VD"].T if cfg.tie_embeddings else p["lm_head_DV"]
    return x @ head


# ---------------------------------------------------------------------------------------------
# RoPE


def test_rope_scores_depend_only_on_relative_position():
    h, theta = 64, 10000.0
    rng = np.random.default_rng(0)
    q = jnp.asarray(rng.standard_normal((1, 1, 1, h)), jnp.float32)
    k = jnp.asarray(rng.standard_normal((1, 1, 1, h)), jnp.float32)

    def score(i, j):
        qi = apply_rope(q, jnp.array([[i]]), theta)
        kj = apply_rope(k, jnp.array([[j]]), theta)
        return float(jnp.sum(qi * kj))

    scale = float(jnp.linalg.norm(q) * jnp.linalg.norm(k))
    for i, j in [(0, 0), (5, 2), (17, 3), (40, 40), (3, 30)]:
        base = score(i, j)
        for s in (1, 7, 64, 200):
            np.testing.assert_allclose(score(i + s, j + s), base, rtol=0, atol=2e-5 * scale)
    # ...and the offset matters: different relative positions give clearly different scores.
    by_offset = np.array([score(10 + r, 10) for r in range(8)])
    assert np.ptp(by_offset) > 0.01 * scale
    # With q = k the score is largest at offset 0, strictly: sum_i |pair_i|^2 cos(r * f_i).
    self_score = lambda i, j: float(jnp.sum(apply_rope(q, jnp.array([[i]]), theta)  # noqa: E731
                                            * apply_rope(q, jnp.array([[j]]), theta)))
    for r in (1, 2, 5, 20):
        assert self_score(30 + r, 30) < self_score(30, 30) - 1e-3 * float(jnp.sum(q * q))
    # Without rotation the score is the plain dot product at every position pair.
    np.testing.assert_allclose(score(0, 0), float(jnp.sum(q * k)), rtol=1e-6)


def test_rope_matches_hf_rotate_half_layout():
    h, theta, t = 8, 10000.0, 21
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, t, 3, h)).astype(np.float32)
    positions = np.broadcast_to(np.arange(t), (2, t))
    got = np.asarray(apply_rope(jnp.asarray(x), jnp.asarray(positions), theta))

    np.testing.assert_allclose(got, _hf_rope(x.astype(np.float64), theta), rtol=1e-5, atol=1e-5)

    # The same thing, spelled as 2-D rotations of the pairs (x[i], x[i + h/2]) by pos * theta^(-2i/h).
    want = np.empty_like(x, dtype=np.float64)
    for i in range(h // 2):
        ang = np.arange(t)[None, :, None] * theta ** (-2.0 * i / h)
        a, b = x[..., i], x[..., i + h // 2]
        want[..., i] = a * np.cos(ang) - b * np.sin(ang)
        want[..., i + h // 2] = b * np.cos(ang) + a * np.sin(ang)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.asarray(rope_inv_freq(h, theta)),
                               [1.0, 0.1, 0.01, 0.001], rtol=1e-6)


def test_rope_uses_positions_argument():
    """Explicit positions shift the rotation: positions t+5 equal a sequence that starts 5 later."""
    h, theta = 16, 500000.0
    x = jnp.asarray(np.random.default_rng(2).standard_normal((1, 10, 2, h)), jnp.float32)
    shifted = apply_rope(x, jnp.arange(10)[None] + 5, theta)
    padded = apply_rope(jnp.concatenate([jnp.zeros((1, 5, 2, h)), x], axis=1), jnp.arange(15)[None], theta)
    np.testing.assert_allclose(np.asarray(shifted), np.asarray(padded[:, 5:]), rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------------------------------------
# The forward pass against the reference, both modes


@pytest.mark.parametrize("kw", [dict(), dict(qk_norm="proj"), dict(qk_norm="head"),
                                dict(attention_bias=True), dict(attention_bias=True, qk_norm="proj")])
def test_forward_matches_reference(kw):
    cfg = small(**kw)
    params = make_params(cfg)
    tokens = tokens_for()
    for pos, rope in ((NOPE, False), (ROPE, True)):
        got = forward(cfg, params, tokens, pos)
        want = reference_forward(cfg, params, tokens, rope=rope)
        assert got.shape == (B, T, cfg.vocab_size)
        np.testing.assert_allclose(got, want, rtol=2e-4, atol=2e-5, err_msg=f"{pos.kind} {kw}")


def test_nope_is_causal_and_differs_from_rope():
    cfg = small()
    params = make_params(cfg)
    a = tokens_for(seed=3)
    t = 6
    b = a.at[:, t + 1:].set((a[:, t + 1:] + 7) % cfg.vocab_size)
    for pos in (NOPE, ROPE):
        la, lb = forward(cfg, params, a, pos), forward(cfg, params, b, pos)
        np.testing.assert_allclose(la[:, : t + 1], lb[:, : t + 1], rtol=1e-5, atol=1e-6)
        assert np.abs(la[:, t + 1:] - lb[:, t + 1:]).max() > 1e-3  # the later tokens do matter

    rope, nope = forward(cfg, params, a, ROPE), forward(cfg, params, a, NOPE)
    # Position 0 attends only to itself, where RoPE is the identity rotation; later positions differ.
    np.testing.assert_allclose(rope[:, 0], nope[:, 0], rtol=1e-5, atol=1e-6)
    assert np.abs(rope[:, 1:] - nope[:, 1:]).max() > 1e-3


def test_packed_documents_equal_separate_documents():
    """With segment ids and positions restarting per document, each document of a packed row gets the
    logits it would get alone, in both modes."""
    cfg = small()
    params = make_params(cfg)
    cut = 7
    tokens = tokens_for(seed=9, b=1)
    segment_ids = jnp.where(jnp.arange(T) < cut, 1, 2)[None]
    positions = jnp.where(jnp.arange(T) < cut, jnp.arange(T), jnp.arange(T) - cut)[None]
    spec = spec_of(cfg)
    packed_fn = jax.jit(lambda p, t, pos: state.apply(spec, p, t, pos, positions_BT=positions,
                                                      segment_ids_BT=segment_ids), static_argnums=2)
    for pos in (ROPE, NOPE):
        packed = np.asarray(packed_fn(params, tokens, pos))
        np.testing.assert_allclose(packed[:, :cut], forward(cfg, params, tokens, pos)[:, :cut],
                                   rtol=1e-5, atol=1e-6)  # the first document: causality alone
        np.testing.assert_allclose(packed[:, cut:], reference_forward(cfg, params, tokens[:, cut:], pos is ROPE),
                                   rtol=2e-4, atol=2e-5)
        assert np.abs(packed[:, cut:] - forward(cfg, params, tokens, pos)[:, cut:]).max() > 1e-3


def test_nope_sees_no_order_among_earlier_tokens():
    """With NoPE and one layer, the last position's output is invariant to permuting the tokens before
    it: its keys and values are functions of single tokens. (With more layers the causal mask itself
    leaks order, so the property holds only for one.)"""
    cfg = small(num_layers=1)
    params = make_params(cfg)
    a = tokens_for(seed=4)
    perm = np.concatenate([np.random.default_rng(0).permutation(T - 1), [T - 1]])
    b = a[:, perm]
    np.testing.assert_allclose(forward(cfg, params, a, NOPE)[:, -1], forward(cfg, params, b, NOPE)[:, -1],
                               rtol=1e-4, atol=1e-5)
    assert np.abs(forward(cfg, params, a, ROPE)[:, -1] - forward(cfg, params, b, ROPE)[:, -1]).max() > 1e-4


@functools.cache
def loss_and_grads(cfg: ModelConfig, pos):
    """Loss and gradients for ``initial_params`` on fixed tokens; ``cfg`` is FULL up to remat."""
    spec = spec_of(cfg)
    tokens = tokens_for(seed=5, t=T + 1)

    def mean_nll(p):
        return jnp.mean(loss.token_nll(state.apply(spec, p, tokens[:, :-1], pos), tokens[:, 1:]))

    value, grads = jax.jit(jax.value_and_grad(mean_nll))(initial_params())
    return float(value), jax.tree.map(np.asarray, grads)


def test_same_params_serve_both_modes():
    cfg = FULL
    params = initial_params()  # straight from state.init_params
    shapes = jax.tree.map(lambda x: (x.shape, x.dtype), params)
    for pos in (ROPE, NOPE):
        value, grads = loss_and_grads(cfg, pos)
        assert np.isfinite(value)
        assert jax.tree.structure(grads) == jax.tree.structure(params)
        assert jax.tree.map(lambda x: (x.shape, x.dtype), grads) == shapes
        # every parameter is used in both modes
        assert all(np.abs(g).max() > 0 for g in jax.tree.leaves(grads))
    assert loss_and_grads(cfg, ROPE)[0] != loss_and_grads(cfg, NOPE)[0]


# ---------------------------------------------------------------------------------------------
# QK-norm, tied embeddings


@pytest.mark.parametrize("kind", ["proj", "head"])
def test_qk_norm_weight_shapes(kind):
    cfg = small(qk_norm=kind, num_kv_heads=2)
    p = state.model_spec(cfg).abstract_params["blocks"]["attn"]
    n, k, h, layers = cfg.num_heads, cfg.num_kv_heads, cfg.dim_per_head, cfg.num_layers
    if kind == "proj":
        assert p["q_norm"]["weight"].shape == (layers, n * h)
        assert p["k_norm"]["weight"].shape == (layers, k * h)
    else:
        assert p["q_norm"]["weight"].shape == (layers, h)
        assert p["k_norm"]["weight"].shape == (layers, h)
    assert "q_norm" not in state.model_spec(small(qk_norm="none")).abstract_params["blocks"]["attn"]


def test_norms_initialised_to_one_and_biases_to_zero():
    attn = initial_params()["blocks"]["attn"]
    for name in ("q_norm", "k_norm"):
        np.testing.assert_array_equal(attn[name]["weight"], 1.0)
    for name in ("q_bias_NH", "k_bias_KH", "v_bias_KH"):
        np.testing.assert_array_equal(attn[name], 0.0)
    assert attn["q_bias_NH"].shape == (FULL.num_layers, FULL.num_heads, FULL.dim_per_head)
    assert attn["k_bias_KH"].shape == (FULL.num_layers, FULL.num_kv_heads, FULL.dim_per_head)
    assert np.std(attn["q_DNH"]) == pytest.approx(FULL.init_std, rel=0.1)


@pytest.mark.parametrize("kind", ["proj", "head"])
def test_qk_norm_off_equals_model_without_qk_norm(kind):
    cfg = small(qk_norm=kind)
    params = make_params(cfg)
    plain = jax.tree.map(lambda x: x, params)
    for name in ("q_norm", "k_norm"):
        del plain["blocks"]["attn"][name]
    tokens = tokens_for(seed=6)
    for pos in (ROPE, NOPE):
        off = forward(cfg, params, tokens, pos, use_qk_norm=False)
        np.testing.assert_allclose(off, forward(small(qk_norm="none"), plain, tokens, pos), rtol=1e-6, atol=1e-6)
        assert np.abs(forward(cfg, params, tokens, pos) - off).max() > 1e-3


def test_tied_embeddings():
    tied = small(tie_embeddings=True)
    spec = spec_of(tied)
    assert "lm_head_DV" not in spec.abstract_params
    params = make_params(tied)
    untied = jax.tree.map(lambda x: x, params)
    untied["lm_head_DV"] = params["embed_VD"].T.copy()
    tokens = tokens_for(seed=7)
    np.testing.assert_allclose(forward(tied, params, tokens, ROPE),
                               forward(small(tie_embeddings=False), untied, tokens, ROPE), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(forward(tied, params, tokens, NOPE),
                               reference_forward(tied, params, tokens, rope=False), rtol=2e-4, atol=2e-5)


# ---------------------------------------------------------------------------------------------
# Sizes and config checks


def test_half_billion_config_builds_abstractly():
    cfg = ModelConfig(vocab_size=49152, d_model=1024, num_layers=24, num_heads=16, num_kv_heads=16, mlp_dim=4096)
    spec = state.model_spec(cfg.validate())
    n = state.count_params(spec.abstract_params)
    assert 0.45e9 <= n <= 0.55e9, n
    assert n == cfg.num_params()
    assert all(isinstance(x, jax.ShapeDtypeStruct) for x in jax.tree.leaves(spec.abstract_params))


@pytest.mark.parametrize("kw", [
    dict(),
    dict(tie_embeddings=True),
    dict(qk_norm="proj"),
    dict(qk_norm="head", tie_embeddings=True),
    dict(num_kv_heads=1, qk_norm="proj"),
    dict(num_heads=8, num_kv_heads=2, head_dim=16, qk_norm="head"),
    dict(num_layers=3, mlp_dim=96, num_kv_heads=4),
    dict(attention_bias=True),
    dict(attention_bias=True, num_kv_heads=1, qk_norm="proj", tie_embeddings=True),
])
def test_num_params_matches_count(kw):
    cfg = small(**kw)
    params = state.model_spec(cfg).abstract_params
    assert cfg.num_params() == state.count_params(params)
    embeddings = params["embed_VD"].size + (0 if cfg.tie_embeddings else params["lm_head_DV"].size)
    assert cfg.num_params(include_embeddings=False) == state.count_params(params) - embeddings


def test_validate_rejects_heads_not_divisible_by_kv_heads():
    with pytest.raises(ConfigError, match="num_kv_heads"):
        ModelConfig(vocab_size=61, d_model=32, num_layers=2, num_heads=4, num_kv_heads=3, mlp_dim=64).validate()
    with pytest.raises(ConfigError, match="qk_norm"):
        small(qk_norm="layer")


# ---------------------------------------------------------------------------------------------
# Rematerialisation


def test_remat_policies_match_no_remat():
    base = FULL
    for policy, pos in (("full", ROPE), ("dots", NOPE)):
        want_loss, want_grads = loss_and_grads(base, pos)
        got_loss, got_grads = loss_and_grads(dataclasses.replace(base, remat=policy), pos)
        np.testing.assert_allclose(got_loss, want_loss, rtol=1e-6)
        jax.tree.map(lambda g, w: np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-7), got_grads, want_grads)


def test_remat_saves_memory_through_the_layer_scan_and_not_when_every_layer_is_unrolled():
    """Remat acts through the layer scan; with every layer unrolled XLA decides what to keep, and the policy
    changes little (docs/performance.md, "Remat and the unrolled layers": on an H200, nothing at all)."""
    cfg = dataclasses.replace(SMALL, num_layers=4)
    tokens = tokens_for(seed=5, b=8, t=64)
    params = jax.eval_shape(lambda: state.init_params(spec_of(cfg), 0, sharding.make_mesh(devices=jax.devices()[:1])))

    def temp_bytes(remat, scan_unroll):
        spec = spec_of(dataclasses.replace(cfg, remat=remat, scan_unroll=scan_unroll))

        def mean_nll(p):
            return jnp.mean(loss.token_nll(state.apply(spec, p, tokens[:, :-1], ROPE), tokens[:, 1:]))

        return jax.jit(jax.grad(mean_nll)).lower(params).compile().memory_analysis().temp_size_in_bytes

    scanned, unrolled = ({remat: temp_bytes(remat, unroll) for remat in ("none", "full")} for unroll in (1, 4))
    # measured on CPU: 12.1 and 3.1 MB through the scan, 9.7 and 9.3 MB unrolled
    assert scanned["full"] < 0.5 * scanned["none"]
    assert unrolled["full"] > 0.9 * unrolled["none"] and unrolled["full"] > 2 * scanned["full"]


def test_every_model_field_is_a_config_key_and_survives_config_json(tmp_path):
    """The model schema is ModelConfig's: config.model has every field (attention_bias included), and a run's
    config.json read back keeps them all."""

    from drope_jax.run_config import default_config, load_run_config

    c = default_config()
    assert set(c.model) == {f.name for f in dataclasses.fields(ModelConfig)}
    c.model.update(attention_bias=True, qk_norm="proj", rope_theta=5e5)
    (tmp_path / "config.json").write_text(c.to_json_best_effort())
    model = ModelConfig.from_dict(dict(load_run_config(tmp_path).model))
    assert (model.attention_bias, model.qk_norm, model.rope_theta) == (True, "proj", 5e5)
    assert ModelConfig.names("shape")[-3:] == ("tie_embeddings", "attention_bias", "qk_norm")
