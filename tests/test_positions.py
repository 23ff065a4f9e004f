"""Position encodings: RoPE scaling against the published formulas (worked numbers, and transformers'
own functions where installed), ALiBi slopes, the sliding-window mask, per-layer patterns and config."""

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from drope_jax import sharding
from drope_jax.errors import ConfigError
from drope_jax.model import attention, positions, state
from drope_jax.model.config import ModelConfig
from drope_jax.model.positions import (
    NOPE,
    ROPE,
    PosEncoding,
    alibi_slopes,
    encode,
    ntk_theta,
    query_scale,
    rope_inv_freq,
    scaled_inv_freq,
    yarn_attention_factor,
    yarn_inv_freq,
)
from drope_jax.run_config import default_config, make_plan


def test_pi_divides_every_frequency_by_the_factor():
    inv_freq, scale = scaled_inv_freq(PosEncoding("rope", scaling="linear", factor=4.0), head_dim=8, theta=10000.0)
    np.testing.assert_allclose(inv_freq, [0.25, 0.025, 0.0025, 0.00025], rtol=1e-6)
    assert scale == 1.0


def test_ntk_raises_the_base_so_the_lowest_frequency_is_interpolated_by_the_factor():
    # theta' = 10000 * 4^(8/6) = 63496.04; inv_freq_i = theta'^(-2i/8)
    assert ntk_theta(10000.0, 8, 4.0) == pytest.approx(63496.04, rel=1e-6)
    inv_freq, scale = scaled_inv_freq(PosEncoding("rope", scaling="ntk", factor=4.0), head_dim=8, theta=10000.0)
    np.testing.assert_allclose(inv_freq, [1.0, 63496.04**-0.25, 63496.04**-0.5, 63496.04**-0.75], rtol=1e-5)
    assert inv_freq[0] == 1.0  # the highest frequency is kept...
    np.testing.assert_allclose(inv_freq[-1], 10000.0**-0.75 / 4, rtol=1e-5)  # ...the lowest is PI's
    assert scale == 1.0


def test_yarn_keeps_fast_dimensions_interpolates_slow_ones_and_ramps_between():
    # head_dim 64, theta 1e4, original context 2048, factor 4: the correction range is
    # low = floor(64 ln(2048 / (32 * 2pi)) / (2 ln 1e4)) = floor(8.06) = 8,
    # high = ceil(64 ln(2048 / (1 * 2pi)) / (2 ln 1e4)) = ceil(20.1) = 21.
    base = np.asarray(rope_inv_freq(64, 10000.0))
    inv_freq = np.asarray(yarn_inv_freq(64, 10000.0, 4.0, 2048))
    np.testing.assert_allclose(inv_freq[:9], base[:9], rtol=1e-6)
    np.testing.assert_allclose(inv_freq[21:], base[21:] / 4, rtol=1e-6)
    ramp = (10 - 8) / (21 - 8)
    np.testing.assert_allclose(inv_freq[10], base[10] * (1 - ramp) + base[10] / 4 * ramp, rtol=1e-6)
    # sqrt(1/t) = 0.1 ln(s) + 1
    assert yarn_attention_factor(4.0) == pytest.approx(1.1386294361)
    assert yarn_attention_factor(1.0) == 1.0


def test_yarn_temperature_multiplies_q_and_k_so_logits_get_its_square():
    x = jax.random.normal(jax.random.key(0), (1, 5, 2, 16))
    positions = jnp.arange(5)[None]
    yarn = PosEncoding("rope", scaling="yarn", factor=8.0, original_length=64)
    q, k = encode(yarn, x, positions, 10000.0), encode(yarn, x[:, ::-1], positions, 10000.0)
    plain_inv_freq = yarn_inv_freq(16, 10000.0, 8.0, 64)
    from drope_jax.model.positions import apply_rope
    q0, k0 = apply_rope(x, positions, 10000.0, plain_inv_freq), apply_rope(x[:, ::-1], positions, 10000.0,
                                                                            plain_inv_freq)
    logits, logits0 = jnp.einsum("btnh,bsnh->bnts", q, k), jnp.einsum("btnh,bsnh->bnts", q0, k0)
    np.testing.assert_allclose(logits, logits0 * (0.1 * math.log(8.0) + 1) ** 2, rtol=1e-5)


def test_scaling_at_factor_one_is_plain_rope():
    for scaling in ("linear", "ntk", "yarn"):
        inv_freq, scale = scaled_inv_freq(PosEncoding("rope", scaling=scaling, factor=1.0, original_length=128), 32,
                                          10000.0)
        np.testing.assert_allclose(inv_freq, rope_inv_freq(32, 10000.0), rtol=1e-6, err_msg=scaling)
        assert scale == 1.0


def test_scaling_matches_transformers_rope_utils():
    pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    def hf(rope_type, seq_len=None, **params):
        config = transformers.LlamaConfig(hidden_size=512, num_attention_heads=8, max_position_embeddings=2048,
                                          rope_parameters={"rope_type": rope_type, "rope_theta": 10000.0, **params})
        inv_freq, attention_factor = ROPE_INIT_FUNCTIONS[rope_type](config, "cpu", seq_len=seq_len)
        return inv_freq.numpy(), attention_factor

    for factor in (2.0, 4.0, 8.0):
        ours = {s: scaled_inv_freq(PosEncoding("rope", scaling=s, factor=factor, original_length=2048), 64, 10000.0)
                for s in ("linear", "ntk", "yarn")}
        expected = {
            "linear": hf("linear", factor=factor),
            # NTK-aware at a fixed factor is HF's dynamic NTK at seq_len = factor x original, its factor 1
            "ntk": hf("dynamic", seq_len=int(factor * 2048), factor=1.0),
            "yarn": hf("yarn", factor=factor, original_max_position_embeddings=2048),
        }
        for s, (inv_freq, attention_factor) in expected.items():
            np.testing.assert_allclose(ours[s][0], inv_freq, rtol=1e-5, err_msg=f"{s} x{factor}")
            assert ours[s][1] == pytest.approx(attention_factor), f"{s} x{factor}"


def test_log_n_scales_only_queries_past_the_training_context():
    pos = PosEncoding("nope", log_n=True, original_length=128)
    scale = np.asarray(query_scale(pos, jnp.asarray([[0, 127, 128, 511]])))
    np.testing.assert_allclose(scale, [[1.0, 1.0, math.log(129) / math.log(128), 9 / 7]], rtol=1e-6)
    assert query_scale(NOPE, jnp.zeros((1, 3))) is None
    np.testing.assert_allclose(query_scale(PosEncoding("nope", logit_scale=1.5), jnp.zeros((1, 2))), 1.5)


def test_alibi_slopes():
    np.testing.assert_allclose(alibi_slopes(8), [2.0**-i for i in range(1, 9)])
    np.testing.assert_allclose(alibi_slopes(4), [2.0**(-2 * i) for i in range(1, 5)])
    # 12 heads: the 8-head sequence, then every other slope of the 16-head one (2^-0.5, 2^-1.5, ...)
    np.testing.assert_allclose(alibi_slopes(12), [2.0**-i for i in range(1, 9)] + [2.0**-(i + 0.5) for i in range(4)])


def test_alibi_slopes_match_bloom():
    pytest.importorskip("torch")
    bloom = pytest.importorskip("transformers.models.bloom.modeling_bloom")
    for n in (1, 3, 6, 16, 24, 40):
        np.testing.assert_allclose(alibi_slopes(n), bloom._get_alibi_slopes(n, "cpu").numpy(), rtol=1e-6)


def test_alibi_bias_is_minus_slope_times_distance():
    bias = np.asarray(attention.alibi_bias(np.asarray([0.5, 0.25]), jnp.arange(3), jnp.arange(3)))
    assert bias.shape == (1, 2, 3, 3)
    np.testing.assert_allclose(bias[0, 0], -0.5 * np.asarray([[0, -1, -2], [1, 0, -1], [2, 1, 0]]))
    np.testing.assert_allclose(bias[0, 1, 2], [-0.5, -0.25, 0.0])


def test_sliding_window_mask_sees_the_last_window_tokens_including_itself():
    keep = np.asarray(attention.visible(jnp.arange(5), jnp.arange(5), window=2)).astype(int)
    np.testing.assert_array_equal(keep, [[1, 0, 0, 0, 0],
                                         [1, 1, 0, 0, 0],
                                         [0, 1, 1, 0, 0],
                                         [0, 0, 1, 1, 0],
                                         [0, 0, 0, 1, 1]])
    # a query continuing a cache at index 3 sees keys 2 and 3 only; unfilled slots are the future
    np.testing.assert_array_equal(np.asarray(attention.visible(jnp.asarray([3]), jnp.arange(6), 2)).astype(int),
                                  [[0, 0, 1, 1, 0, 0]])


def _qkv(t, n=4, k=2, h=8, seed=0):
    keys = jax.random.split(jax.random.key(seed), 3)
    return (jax.random.normal(keys[0], (2, t, n, h)), jax.random.normal(keys[1], (2, t, k, h)),
            jax.random.normal(keys[2], (2, t, k, h)))


@pytest.mark.parametrize("window, slopes", [(None, None), (3, None), (None, [0.5, 0.25, 0.125, 0.0625]),
                                            (4, [1.0, 0.5, 0.25, 0.125])])
def test_fused_chunked_and_offset_attention_agree(window, slopes):
    """The fused call (is_causal, static window), the chunked path and a cache continuation give one answer."""
    q, k, v = _qkv(10)
    kw = dict(window=window, alibi_slopes_N=None if slopes is None else np.asarray(slopes, np.float32))
    fused = attention.causal_attention(q, k, v, **kw)
    chunked = attention.causal_attention(q, k, v, query_chunk=3, **kw)
    tail = attention.causal_attention(q[:, 6:], jnp.pad(k, ((0, 0), (0, 5), (0, 0), (0, 0))),
                                      jnp.pad(v, ((0, 0), (0, 5), (0, 0), (0, 0))), q_offset=6, **kw)
    np.testing.assert_allclose(chunked, fused, atol=1e-5)
    np.testing.assert_allclose(tail, fused[:, 6:], atol=1e-5)


def test_window_hides_keys_beyond_it():
    q, k, v = _qkv(8)
    out = attention.causal_attention(q, k, v, window=3)
    k2, v2 = k.at[:, 4].set(9.0), v.at[:, 4].set(9.0)  # key 4 is outside the window of queries 7+
    out2 = attention.causal_attention(q, k2, v2, window=3)
    np.testing.assert_array_equal(out[:, 7], out2[:, 7])
    assert not np.allclose(out[:, 6], out2[:, 6])


def test_chunked_attention_memory_grows_linearly_in_t():
    """The CPU path for long inputs: scratch memory is linear in T (B x N x chunk x T logits), where the
    unchunked call's is quadratic (3 GB for 4 heads at 8192 tokens)."""
    def scratch_bytes(t, query_chunk):
        shapes = [jax.ShapeDtypeStruct((1, t, 4, 16), jnp.float32)] + [jax.ShapeDtypeStruct((1, t, 2, 16),
                                                                                            jnp.float32)] * 2
        fn = jax.jit(lambda q, k, v: attention.causal_attention(q, k, v, query_chunk=query_chunk))
        return fn.lower(*shapes).compile().memory_analysis().temp_size_in_bytes

    chunked_2k, chunked_8k = scratch_bytes(2048, 512), scratch_bytes(8192, 512)
    assert chunked_8k < 4.5 * chunked_2k
    assert chunked_8k < scratch_bytes(8192, None) / 10


def test_layer_pattern_matches_smollm3_no_rope_layers():
    pos = PosEncoding("rope", nope_every=4, window=64)
    smollm3_flags = [int((i + 1) % 4 != 0) for i in range(8)]  # transformers' SmolLM3 default, 1 = RoPE
    np.testing.assert_array_equal(pos.positional_layers(8), smollm3_flags)
    assert not NOPE.positional_layers(3).any() and ROPE.positional_layers(3).all()
    assert PosEncoding("rope", nope_every=1).positional_layers(3).tolist() == [False] * 3


CFG = ModelConfig(vocab_size=37, d_model=32, num_layers=4, num_heads=4, num_kv_heads=2, mlp_dim=48,
                  compute_dtype="float32").validate()


_apply = jax.jit(state.apply, static_argnums=(0, 3))


def _params(cfg):
    spec = state.model_spec(cfg)
    params = state.init_params(spec, 0, sharding.make_mesh(devices=jax.devices()[:1]))
    return spec, jax.tree.map(lambda x: x * 8 if x.ndim == 4 else x, params)  # sharper attention


def _layer_by_layer(spec, params, tokens, per_layer):
    """The forward pass written as a Python loop over layers, each with its own static PosEncoding."""
    model = nnx.merge(spec.graphdef, params)
    x = jnp.take(model.embed_VD[...], tokens, axis=0)
    positions = jnp.broadcast_to(jnp.arange(tokens.shape[1]), tokens.shape)
    graphdef, layers = nnx.split(model.blocks)
    delta = jnp.zeros_like(x)
    for i, pos in enumerate(per_layer):
        block = nnx.merge(graphdef, jax.tree.map(lambda a, i=i: a[i], layers))
        x, delta, _ = block(x, delta, positions, None, pos, True)
    return model.final_norm(x + delta) @ model.lm_head_DV[...]


@pytest.mark.parametrize("kind", ["rope", "alibi"])
def test_per_layer_pattern_equals_a_loop_of_uniform_layers(kind):
    spec, params = _params(CFG)
    tokens = jax.random.randint(jax.random.key(1), (2, 24), 0, CFG.vocab_size)
    pattern = PosEncoding(kind, nope_every=2, window=5)
    positional, nope = PosEncoding(kind, window=5), NOPE
    expected = jax.jit(_layer_by_layer, static_argnums=(0, 3))(spec, params, tokens,
                                                                (positional, nope, positional, nope))
    got = _apply(spec, params, tokens, pattern)
    np.testing.assert_allclose(got, expected, atol=2e-5)
    assert not np.allclose(got, _apply(spec, params, tokens, PosEncoding(kind)), atol=1e-3)


def test_alibi_and_windowed_rope_differ_from_plain_modes():
    spec, params = _params(CFG)
    tokens = jax.random.randint(jax.random.key(2), (1, 24), 0, CFG.vocab_size)
    outs = {p: np.asarray(_apply(spec, params, tokens, p)) for p in
            (ROPE, NOPE, PosEncoding("alibi"), PosEncoding("rope", window=4))}
    names = list(outs)
    for i in range(len(names)):
        for j in range(i + 1, len(names)):
            assert not np.allclose(outs[names[i]], outs[names[j]], atol=1e-3), (names[i], names[j])
    # with the window past the sequence, windowed RoPE is plain RoPE
    np.testing.assert_allclose(_apply(spec, params, tokens, PosEncoding("rope", window=24)), outs[ROPE],
                               atol=1e-5)


@pytest.mark.parametrize("fields, message", [
    (dict(kind="relative"), "kind='relative'"),
    (dict(kind="nope", window=8), "sliding window"),
    (dict(kind="alibi", scaling="yarn", factor=2.0, original_length=8), "rescales RoPE"),
    (dict(scaling="yarn", factor=2.0), "original_length"),
    (dict(scaling="ntk", factor=0.5), "factor"),
])
def test_bad_encodings_are_refused_by_name(fields, message):
    with pytest.raises(ValueError, match=message):
        PosEncoding(**fields)


def test_config_positions_become_the_pre_flip_encoding():
    c = default_config()
    c.train.total_steps = 10
    c.positions.update(kind="rope", nope_every=4, window=32)
    plan = make_plan(c)
    assert plan.pos == PosEncoding("rope", nope_every=4, window=32)
    assert plan.phase_pos("rope") == plan.pos and plan.phase_pos("nope") == NOPE
    c.positions.update(kind="nope")
    with pytest.raises(ConfigError, match="config.positions"):
        make_plan(c)


def test_hashable_for_jit():
    a = PosEncoding("rope", scaling="yarn", factor=2.0, original_length=16)
    assert hash(a) == hash(dataclasses.replace(a)) and a != dataclasses.replace(a, factor=4.0)


def test_nope_as_data_is_nope_bit_for_bit():
    """NoPE shares RoPE's programs as RoPE with zero frequencies (``as_data``): q and k come out unchanged."""
    x = jax.random.normal(jax.random.key(0), (2, 7, 4, 16)).astype(jnp.bfloat16)
    static, table = positions.as_data(NOPE, 16, 10000.0)
    assert static.kind == "rope"
    positions_BT = jnp.broadcast_to(jnp.arange(7), (2, 7))
    np.testing.assert_array_equal(positions.encode(static, x, positions_BT, 10000.0, True, table), x)
