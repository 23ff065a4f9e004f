"""bench/step_variants.py's rewrites compute what the model computes (their speed is measured on a GPU)."""

import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from drope_jax import sharding
from drope_jax.model import transformer
from drope_jax.model.config import ModelConfig
from drope_jax.run_config import load_module

BENCH = load_module(pathlib.Path(__file__).parents[1] / "bench" / "step_variants.py")


def test_swiglu_with_its_hand_written_backward_matches_autodiff():
    gate, up, d_h = (jnp.asarray(np.random.default_rng(i).standard_normal((2, 3, 8)) * 3, jnp.float32)
                     for i in range(3))
    value, vjp = jax.vjp(BENCH.swiglu, gate, up)
    want_value, want_vjp = jax.vjp(lambda g, u: jax.nn.silu(g) * u, gate, up)
    np.testing.assert_allclose(value, want_value, rtol=1e-6)
    for got, want in zip(vjp(d_h), want_vjp(d_h)):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def _module_and_input(module_cls, **config):
    """A small float32 ``module_cls`` (transformer.Attention or MLP) and an input [2, 5, 16] for it."""
    cfg = ModelConfig(vocab_size=32, d_model=16, num_layers=1, num_heads=4, num_kv_heads=2, mlp_dim=24,
                      compute_dtype="float32", **config).validate()
    return module_cls(cfg, nnx.Rngs(0)), jnp.asarray(np.random.default_rng(0).standard_normal((2, 5, 16)), jnp.float32)


@pytest.mark.parametrize("attention_bias", [False, True])
def test_the_fused_query_key_value_projection_equals_three_products(attention_bias, monkeypatch):
    attention, x_BTD = _module_and_input(transformer.Attention, attention_bias=attention_bias)
    if attention_bias:  # biases start at zero: give them values, different for key and value
        rng = np.random.default_rng(1)
        for bias in (attention.q_bias_NH, attention.k_bias_KH, attention.v_bias_KH):
            bias.value = jnp.asarray(rng.standard_normal(bias.value.shape), jnp.float32)
    monkeypatch.setattr(transformer.Attention, "fused_qkv", False)
    assert attention.input_copies == 3
    want_qkv = attention._project_qkv(x_BTD)
    monkeypatch.setattr(transformer.Attention, "fused_qkv", True)
    assert attention.input_copies == 1
    for x in (x_BTD, (x_BTD,)):  # an array, or the one copy that the norm kernel hands a single product
        for got, want in zip(attention._project_qkv(x), want_qkv, strict=True):
            assert got.shape == want.shape
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_the_query_key_value_projection_is_fused_where_the_norm_kernel_runs(monkeypatch):
    attention, _ = _module_and_input(transformer.Attention)
    assert not attention.fused_qkv  # "auto" on a CPU
    monkeypatch.setattr(sharding, "target_platform", lambda: "gpu")
    with jax.set_mesh(sharding.make_mesh(devices=jax.devices()[:1])):
        assert attention.fused_qkv and attention.input_copies == 1
    with jax.set_mesh(sharding.make_mesh(data=2, fsdp=4)):  # sharded weights stay apart
        assert not attention.fused_qkv


def test_the_mlp_rewrites_equal_the_models_mlp():
    mlp, x_BTD = _module_and_input(transformer.MLP)
    for rewrite, copies in ((BENCH.mlp_gate_up_fused, 1), (BENCH.mlp_swiglu_vjp, 2)):
        for x in (x_BTD, (x_BTD,) * copies):
            np.testing.assert_allclose(rewrite(mlp, x), mlp(x_BTD), rtol=1e-5, atol=1e-6)


def test_an_xla_variant_names_its_compiler_options():
    got = BENCH.compiler_options("xla:xla_gpu_triton_gemm_any+xla_gpu_autotune_level=0+xla_gpu_enable_cublaslt=false")
    assert got == {"xla_gpu_triton_gemm_any": True, "xla_gpu_autotune_level": 0, "xla_gpu_enable_cublaslt": False}
    assert BENCH.compiler_options("qkv_fused") == {}
    # a list value, its items separated by |; an empty value
    assert BENCH.compiler_options("xla:xla_gpu_enable_command_buffer=FUSION|CONDITIONAL+xla_gpu_autotune_level=0") == {
        "xla_gpu_enable_command_buffer": "FUSION,CONDITIONAL", "xla_gpu_autotune_level": 0}
    assert BENCH.compiler_options("xla:xla_gpu_enable_command_buffer=") == {"xla_gpu_enable_command_buffer": ""}


def test_back_to_back_timing_launches_every_step_and_waits_once():
    calls = []
    times = BENCH.timed_steps(lambda: calls.append("launch"), lambda: calls.append("wait"), 3, back_to_back=True)
    assert calls == ["launch"] * 3 + ["wait"] and len(times) == 3 and len(set(times)) == 1
    calls.clear()
    assert len(BENCH.timed_steps(lambda: calls.append("launch"), lambda: calls.append("wait"), 2)) == 2
    assert calls == ["launch", "wait"] * 2


def test_the_select_skip_updates_as_the_librarys_cond():
    import optax

    from drope_jax.train import step

    params = {"w": jnp.arange(6.0).reshape(2, 3)}
    tx = optax.adamw(0.1)
    opt_state = tx.init(params)
    for finite, grad in ((True, jnp.ones((2, 3))), (False, jnp.full((2, 3), jnp.nan))):
        got = BENCH.update_if_finite_select(tx, {"w": grad}, opt_state, params, jnp.asarray(finite))
        want = step.update_if_finite(tx, {"w": grad}, opt_state, params, jnp.asarray(finite))
        jax.tree.map(np.testing.assert_array_equal, got, want)
        assert bool(jnp.any(got[0]["w"] != 0)) == finite


def test_norm_forward_kernel_puts_the_forward_kernel_before_the_backward_kernel(monkeypatch):
    from drope_jax.model import norm_kernels

    rng = np.random.default_rng(0)
    x, delta = (jnp.asarray(rng.standard_normal((2, 8, 24)), jnp.bfloat16) for _ in range(2))
    weight = jnp.asarray(1 + rng.standard_normal(24) / 2, jnp.float32)

    def loss(x, delta, weight):
        s, normed = norm_kernels.add_norm(x, delta, weight, 1e-5, 2, "pallas")
        return jnp.sum(s.astype(jnp.float32)) + sum(jnp.sum(n.astype(jnp.float32) ** 2) for n in normed)

    def pallas_calls():
        return str(jax.make_jaxpr(jax.grad(loss, argnums=(0, 1, 2)))(x, delta, weight)).count("pallas_call")

    assert pallas_calls() == 2  # the library: both kernels
    with BENCH.patched("norm_xla_forward"):
        assert pallas_calls() == 1
    monkeypatch.setattr(norm_kernels, "FORWARD_KERNEL", False)  # the backward kernel alone
    assert pallas_calls() == 1
    with BENCH.patched("norm_forward_kernel"):
        assert pallas_calls() == 2
        grads = jax.grad(loss, argnums=(0, 1, 2))(x, delta, weight)
    assert pallas_calls() == 1 and not norm_kernels.FORWARD_KERNEL
    for got, want in zip(grads, jax.grad(loss, argnums=(0, 1, 2))(x, delta, weight)):
        np.testing.assert_allclose(np.asarray(got, np.float32), np.asarray(want, np.float32), rtol=2e-2, atol=1e-2)


def test_the_fused_projections_hand_the_norm_kernel_one_copy(monkeypatch):
    """With the norm kernel, the model (query, key and value fused) and gate_up_fused compute what the three
    products apart compute (qkv_separate), and norm_kernels.py's backward gets one input gradient where a single
    product reads the norm."""
    from drope_jax.model import norm_kernels

    cfg = ModelConfig(vocab_size=32, d_model=16, num_layers=1, num_heads=4, num_kv_heads=2, mlp_dim=24,
                      compute_dtype="float32", norm_backend="pallas").validate()
    graphdef, params = nnx.split(transformer.Transformer(cfg, nnx.Rngs(0)))
    tokens = jnp.asarray(np.random.default_rng(0).integers(0, 32, (2, 8)))

    def loss(params):
        return jnp.mean(jax.nn.log_softmax(nnx.merge(graphdef, params)(tokens))[..., 1])

    copies = []
    backward = norm_kernels.add_norm_backward
    monkeypatch.setattr(norm_kernels, "add_norm_backward",
                        lambda s, d_s, w, d_ns, eps: copies.append(len(d_ns)) or backward(s, d_s, w, d_ns, eps))
    with BENCH.patched("qkv_separate"):
        want_loss, want_grads = jax.jit(jax.value_and_grad(loss))(params)
    assert sorted(set(copies)) == [1, 2, 3]  # the final norm; the MLP's; the attention's
    for variant, want_copies in (("base", [1, 2]), ("gate_up_fused", [1])):
        copies.clear()
        with BENCH.patched(variant):
            got_loss, got_grads = jax.jit(jax.value_and_grad(loss))(params)
        assert sorted(set(copies)) == want_copies
        np.testing.assert_allclose(got_loss, want_loss, rtol=1e-5)
        jax.tree.map(lambda g, w: np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-6), got_grads, want_grads)


def test_mlp_forward_kernel_puts_the_forward_kernel_before_the_backward_kernel():
    from drope_jax.model import mlp_kernels

    gate, up = (jnp.asarray(np.random.default_rng(i).standard_normal((2, 4, 8)), jnp.float32) for i in range(2))

    def grad():  # a new function each time, as each variant's step is: jit keeps a function's trace
        return jax.grad(lambda g, u: jnp.sum(mlp_kernels.swiglu(g, u, "pallas") ** 2), argnums=(0, 1))

    def pallas_calls():
        return str(jax.make_jaxpr(grad())(gate, up)).count("pallas_call")

    assert pallas_calls() == 1
    with BENCH.patched("mlp_forward_kernel"):
        assert pallas_calls() == 2
        got = jax.jit(grad())(gate, up)
    assert pallas_calls() == 1 and not mlp_kernels.FORWARD_KERNEL
    jax.tree.map(lambda g, w: np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-6), got, grad()(gate, up))
