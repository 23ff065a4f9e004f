"""Splash attention (Pallas, run in interpret mode on CPU) against XLA attention, alone, sharded over
the mesh and inside the model; and how the backend is chosen."""

import dataclasses
import logging

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from drope_jax import sharding
from drope_jax.errors import ConfigError
from drope_jax.model import attention, state
from drope_jax.model.config import ModelConfig
from drope_jax.model.positions import NOPE, PosEncoding, alibi_slopes


def _qkv(t, n=4, k=2, h=32, b=2):
    keys = jax.random.split(jax.random.PRNGKey(0), 3)
    return (jax.random.normal(keys[0], (b, t, n, h)), jax.random.normal(keys[1], (b, t, k, h)),
            jax.random.normal(keys[2], (b, t, k, h)))


def _documents(b, lengths):
    return jnp.asarray(np.repeat(np.arange(len(lengths)), lengths)[None].repeat(b, 0), jnp.int32)


@pytest.mark.parametrize("window, documents", [(None, False), (200, False), (None, True), (50, True)])
def test_splash_equals_xla_attention_and_its_gradients(window, documents):
    """384 tokens = three 128-token blocks: the kernel skips masked blocks and masks partial ones."""
    q, k, v = _qkv(384)
    seg = _documents(2, [100, 30, 254]) if documents else None  # ends inside blocks

    def loss(impl):
        return lambda q, k, v: jnp.sum(attention.causal_attention(q, k, v, seg, impl, window=window) ** 2)

    np.testing.assert_allclose(attention.causal_attention(q, k, v, seg, "splash", window=window),
                               attention.causal_attention(q, k, v, seg, "xla", window=window), atol=2e-5)
    for got, want in zip(jax.grad(loss("splash"), argnums=(0, 1, 2))(q, k, v),
                         jax.grad(loss("xla"), argnums=(0, 1, 2))(q, k, v)):
        np.testing.assert_allclose(got, want, atol=2e-4, rtol=1e-4)


@pytest.mark.parametrize("num_kv_heads", [2, 1])  # 1: kv heads cannot split over tensor=2, so they are repeated
def test_splash_under_shard_map_on_the_mesh(num_kv_heads):
    q, k, v = _qkv(128, n=4, k=num_kv_heads, b=4)
    seg = _documents(4, [100, 28])
    mesh = sharding.make_mesh(data=2, fsdp=2, tensor=2)
    with jax.set_mesh(mesh):
        fn = jax.jit(lambda q, k, v, s: attention.causal_attention(q, k, v, s, "splash"))
        out = fn(q, k, v, seg)
        assert "shard_map" in str(jax.make_jaxpr(fn)(q, k, v, seg))
    np.testing.assert_allclose(out, attention.causal_attention(q, k, v, seg, "xla"), atol=2e-5)


def test_model_with_splash_equals_model_with_xla():
    cfg = ModelConfig(vocab_size=64, d_model=64, num_layers=2, num_heads=4, num_kv_heads=2, mlp_dim=128,
                      compute_dtype="float32", attention_backend="splash")
    spec_splash = state.model_spec(cfg)
    spec_xla = state.model_spec(dataclasses.replace(cfg, attention_backend="xla"))
    mesh = sharding.make_mesh(fsdp=4, tensor=2)
    params = state.init_params(spec_splash, 0, mesh)
    tokens = jax.random.randint(jax.random.PRNGKey(1), (4, 128), 0, 64)
    windowed = PosEncoding("rope", nope_every=2, window=40)  # a traced per-layer window flag: lax.cond of two calls
    with jax.set_mesh(mesh):
        for pos in (NOPE, windowed):
            got = jax.jit(lambda p, t, pos=pos: state.apply(spec_splash, p, t, pos))(params, tokens)
            np.testing.assert_allclose(got, state.apply(spec_xla, params, tokens, pos), atol=1e-4)


def test_auto_picks_splash_on_tpu_cudnn_on_gpu_xla_on_cpu(monkeypatch):
    choose = attention.choose_implementation
    assert choose("auto", jnp.bfloat16, 1024, has_bias=False, has_mask=False) == "xla"  # this CPU
    monkeypatch.setattr(sharding, "target_platform", lambda: "tpu")
    assert choose("auto", jnp.bfloat16, 1024, has_bias=False, has_mask=True) == "splash"
    assert choose(None, jnp.float32, 1024, has_bias=False, has_mask=False) == "splash"
    monkeypatch.setattr(sharding, "target_platform", lambda: "gpu")
    assert choose("auto", jnp.bfloat16, 1024, has_bias=False, has_mask=False) == "cudnn"
    assert choose("auto", jnp.bfloat16, 1024, has_bias=True, has_mask=False) == "cudnn"  # ALiBi
    assert choose("auto", jnp.bfloat16, 1024, has_bias=False, has_mask=True) == "xla"
    assert choose("auto", jnp.float32, 1024, has_bias=True, has_mask=False) == "xla"


@pytest.mark.parametrize("seq_len, has_bias, why", [(1024, True, "ALiBi"), (1000, False, "divisible by 128")])
def test_splash_falls_back_to_xla_and_says_so(seq_len, has_bias, why, caplog):
    attention._warn_once.cache_clear()
    with caplog.at_level(logging.WARNING, logger="drope_jax.model.attention"):
        assert attention.choose_implementation("splash", jnp.bfloat16, seq_len, has_bias=has_bias,
                                               has_mask=False) == "xla"
    assert why in caplog.text


def test_a_wrong_backend_is_refused_by_name():
    with pytest.raises(ValueError, match="attention_backend"):
        attention.choose_implementation("flash", jnp.bfloat16, 128, has_bias=False, has_mask=False)
    with pytest.raises(ConfigError, match="config.model.attention_backend"):
        ModelConfig(vocab_size=8, d_model=8, num_layers=1, num_heads=2, num_kv_heads=2, mlp_dim=8,
                    attention_backend="flash").validate()


def test_alibi_reaches_cudnn_as_a_bias_in_the_inputs_dtype_within_its_rounding(monkeypatch):
    """cuDNN takes a bias only in q's 16-bit dtype; the rounding stays within the docstring's |bias| x 2^-8."""
    seen = {}

    def fake_attention(q, k, v, *, bias, implementation, **_):
        seen.update(bias=bias, implementation=implementation)
        return q

    monkeypatch.setattr(jax.nn, "dot_product_attention", fake_attention)
    slopes_N = alibi_slopes(4)
    q_BTNH = jnp.ones((1, 300, 4, 8), jnp.bfloat16)
    attention.causal_attention(q_BTNH, q_BTNH, q_BTNH, implementation="cudnn", alibi_slopes_N=slopes_N)
    assert seen["implementation"] == "cudnn" and seen["bias"].dtype == jnp.bfloat16
    exact = attention.alibi_bias(slopes_N, jnp.arange(300), jnp.arange(300))
    np.testing.assert_array_less(np.abs(np.float32(seen["bias"]) - exact), np.abs(exact) * 2.0**-8 + 1e-12)
    attention.causal_attention(q_BTNH, q_BTNH, q_BTNH, implementation="xla", alibi_slopes_N=slopes_N)
    assert seen["bias"].dtype == jnp.float32  # XLA adds it to float32 logits as it is
