"""drope_jax/model/mlp_kernels.py's SwiGLU backward computes autodiff's gradients and its forward kernel XLA's
product to its rounding (in Pallas's interpreter here; bench/mlp_kernels.py times them on a GPU), on one device
and under an 8-device mesh, and config.model.mlp_backend picks it where it should; each kernel setting (this one
and the loss's) reaches the train step."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from drope_jax import sharding
from drope_jax.errors import ConfigError
from drope_jax.model import mlp_kernels, state
from drope_jax.model.config import ModelConfig
from drope_jax.model.positions import ROPE
from drope_jax.train import step


def _gate_up_and_grad(shape, dtype=jnp.float32):
    rng = np.random.default_rng(0)
    return (jnp.asarray(3 * rng.standard_normal(shape), dtype) for _ in range(3))


def _autodiff(gate, up, d_h):
    value, vjp = jax.vjp(lambda g, u: jax.nn.silu(g) * u, gate, up)
    return value, vjp(d_h)


@pytest.mark.parametrize("block", [16, 64])  # 15 and 4 blocks of the 240 elements
def test_the_kernel_gives_autodiffs_gradients_across_blocks(block):
    gate, up, d_h = _gate_up_and_grad((2, 3, 40))
    want_value, want_grads = _autodiff(gate, up, d_h)
    for got, want in zip(mlp_kernels.swiglu_backward(d_h, gate, up, block=block), want_grads):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    value, vjp = jax.vjp(mlp_kernels.pallas_swiglu, gate, up)
    np.testing.assert_array_equal(value, want_value)  # the forward is XLA's either way
    for got, want in zip(vjp(d_h), want_grads):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def _sum_and_grads(backend, gate, up, d_h):
    return jax.jit(jax.value_and_grad(lambda g, u: jnp.sum(mlp_kernels.swiglu(g, u, backend) * d_h),
                                      argnums=(0, 1)))(gate, up)


@pytest.mark.parametrize("forward_kernel", [False, True])
def test_the_kernel_under_an_8_device_mesh_gives_the_xla_gradients(forward_kernel, monkeypatch):
    """Under shard_map with the activations' layout: batch over data x fsdp, the MLP's features over tensor."""
    monkeypatch.setattr(mlp_kernels, "FORWARD_KERNEL", forward_kernel)
    gate, up, d_h = _gate_up_and_grad((4, 3, 16))
    want_value, want_grads = _sum_and_grads("xla", gate, up, d_h)
    with jax.set_mesh(sharding.make_mesh(data=2, fsdp=2, tensor=2)):
        value, grads = _sum_and_grads("pallas", gate, up, d_h)
        jaxpr = str(jax.make_jaxpr(lambda g, u: mlp_kernels.swiglu(g, u, "pallas"))(gate, up))
    assert "shard_map" in jaxpr
    np.testing.assert_allclose(value, want_value, rtol=1e-5)
    for got, want in zip(grads, want_grads):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_the_backend_choice_and_its_errors(monkeypatch):
    assert sharding.kernel_implementation("auto", "config.model.mlp_backend") == "xla"  # this CPU is no GPU
    with pytest.raises(ValueError, match="config.model.mlp_backend='triton'"):
        mlp_kernels.swiglu(jnp.ones(4), jnp.ones(4), "triton")
    with pytest.raises(ConfigError, match="config.model.mlp_backend"):
        ModelConfig(vocab_size=8, d_model=8, num_layers=1, num_heads=2, num_kv_heads=2, mlp_dim=8,
                    mlp_backend="triton").validate()
    monkeypatch.setattr(sharding, "target_platform", lambda: "gpu")
    with jax.set_mesh(sharding.make_mesh(devices=jax.devices()[:1])):
        assert sharding.kernel_implementation("auto", "config.model.mlp_backend") == "pallas"
    with jax.set_mesh(sharding.make_mesh(data=2, fsdp=4)):
        assert sharding.kernel_implementation("auto", "config.model.mlp_backend") == "xla"


@pytest.mark.parametrize("setting", ["mlp_backend", "loss_backend", "norm_backend"])
def test_each_kernel_setting_reaches_the_train_step_and_changes_no_value(setting):
    """config.model.mlp_backend (this module's kernel), loss_backend (loss_kernels.py's) and norm_backend
    (norm_kernels.py's), each with the others on XLA: "pallas" puts Pallas calls in the train step's loss and
    gradients, and changes neither."""
    batch = {"tokens": jnp.asarray(np.random.default_rng(0).integers(0, 300, (2, 9)), jnp.int32)}

    def loss_grads_and_jaxpr(backend):
        backends = {"mlp_backend": "xla", "loss_backend": "xla", "norm_backend": "xla", setting: backend}
        spec = state.model_spec(ModelConfig(vocab_size=300, d_model=16, num_layers=2, num_heads=2, num_kv_heads=1,
                                            mlp_dim=32, compute_dtype="float32", **backends).validate())
        params = state.init_params(spec, 0, sharding.make_mesh(devices=jax.devices()[:1]))
        f = jax.value_and_grad(lambda p: step.loss_fn(p, batch, spec=spec, pos=ROPE, use_qk_norm=False))
        return f(params), str(jax.make_jaxpr(f)(params))

    (want, want_grads), xla_jaxpr = loss_grads_and_jaxpr("xla")
    (got, got_grads), jaxpr = loss_grads_and_jaxpr("pallas")
    assert "pallas_call" in jaxpr and "pallas_call" not in xla_jaxpr
    np.testing.assert_allclose(got, want, rtol=1e-6)
    jax.tree.map(lambda g, w: np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-7), got_grads, want_grads)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_the_forward_kernel_rounds_once(dtype, monkeypatch):
    """silu(gate) * up in float32 arithmetic rounded once: within one rounding of the float32 product, and of
    XLA's bf16 product within four (XLA rounds after each of its three operations). Its gradients are the
    backward kernel's, as without it."""
    gate, up, d_h = _gate_up_and_grad((2, 3, 40), dtype)
    got = np.asarray(mlp_kernels.swiglu_forward(gate, up, block=16), np.float32)
    gate32, up32 = (np.asarray(a, np.float32) for a in (gate, up))
    exact = gate32 / (1 + np.exp(-gate32)) * up32
    one_rounding = 1e-6 if dtype == jnp.float32 else 2 ** -8
    np.testing.assert_allclose(got, exact, rtol=one_rounding, atol=1e-6)
    xla = np.asarray(jax.nn.silu(gate) * up, np.float32)
    np.testing.assert_allclose(got, xla, rtol=4 * one_rounding, atol=1e-6)
    monkeypatch.setattr(mlp_kernels, "FORWARD_KERNEL", True)
    value, vjp = jax.vjp(jax.jit(lambda g, u: mlp_kernels.swiglu(g, u, "pallas")), gate, up)
    np.testing.assert_array_equal(np.asarray(value, np.float32), got)
    for g, w in zip(vjp(d_h), mlp_kernels.swiglu_backward(d_h, gate, up)):
        np.testing.assert_array_equal(g, w)
