"""drope_jax/model/norm_kernels.py's residual add + RMSNorm: its Pallas backward (in Pallas's interpreter here)
computes autodiff's gradients for every number of copies, across row blocks, with a width that is no power of two,
on one device and under an 8-device mesh; its forward kernel rounds as XLA does; config.model.norm_backend is
checked."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from drope_jax import sharding
from drope_jax.errors import ConfigError
from drope_jax.model import norm_kernels
from drope_jax.model.config import ModelConfig

EPS = 1e-5


def _inputs(shape, dtype=jnp.float32):
    rng = np.random.default_rng(0)
    x, delta = (jnp.asarray(rng.standard_normal(shape), dtype) for _ in range(2))
    return x, delta, jnp.asarray(1 + rng.standard_normal(shape[-1:]) / 2, jnp.float32)


def _loss(backend, copies):
    """A scalar that weighs s and each copy of the norm differently, so every cotangent differs."""
    def loss(x, delta, weight):
        s, normed = norm_kernels.add_norm(x, delta, weight, EPS, copies, backend)
        return jnp.sum(jnp.sin(s)) + sum(jnp.sum((i + 1) * n * jnp.cos(n)) for i, n in enumerate(normed))
    return jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2)))


@pytest.mark.parametrize("copies, forward_kernel", [(1, False), (2, False), (3, False), (3, True)])
@pytest.mark.parametrize("shape", [(2, 8, 24), (3, 2, 40)])  # 2 programs of 8 rows; 3 of 2 rows
def test_the_kernel_gives_autodiffs_gradients(copies, shape, forward_kernel, monkeypatch):
    monkeypatch.setattr(norm_kernels, "FORWARD_KERNEL", forward_kernel)
    x, delta, weight = _inputs(shape)
    want_value, want_grads = _loss("xla", copies)(x, delta, weight)
    value, grads = _loss("pallas", copies)(x, delta, weight)
    np.testing.assert_allclose(value, want_value, rtol=1e-6)
    for got, want in zip(grads, want_grads):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("shape", [(2, 8, 24), (3, 2, 40)])
def test_the_forward_kernel_rounds_as_xla(shape, monkeypatch):
    """s bit for bit (one rounding of the bf16 sum); n within one bf16 rounding (the row's sum runs in another
    order), both in and out of autodiff."""
    monkeypatch.setattr(norm_kernels, "FORWARD_KERNEL", True)
    x, delta, weight = _inputs(shape, jnp.bfloat16)
    want_s, (want_normed, _) = norm_kernels.add_norm(x, delta, weight, EPS, 2, "xla")
    (s, normed), _ = jax.vjp(lambda x, d, w: norm_kernels.add_norm(x, d, w, EPS, 2, "pallas"), x, delta, weight)
    for got_s, got_normed in ((s, normed), norm_kernels.add_norm(x, delta, weight, EPS, 2, "pallas")):
        np.testing.assert_array_equal(got_s, want_s)
        for n in got_normed:
            np.testing.assert_allclose(np.asarray(n, np.float32), np.asarray(want_normed, np.float32),
                                       rtol=2 ** -8, atol=0)


@pytest.mark.parametrize("forward_kernel", [False, True])
def test_the_kernel_under_an_8_device_mesh_gives_the_xla_gradients(forward_kernel, monkeypatch):
    """Under shard_map: rows over data x fsdp, each row whole on one device (the tensor axis replicates)."""
    monkeypatch.setattr(norm_kernels, "FORWARD_KERNEL", forward_kernel)
    x, delta, weight = _inputs((4, 4, 24))
    want_value, want_grads = _loss("xla", 3)(x, delta, weight)
    with jax.set_mesh(sharding.make_mesh(data=2, fsdp=2, tensor=2)):
        value, grads = _loss("pallas", 3)(x, delta, weight)
        jaxpr = str(jax.make_jaxpr(_loss("pallas", 3))(x, delta, weight))
    assert "shard_map" in jaxpr
    np.testing.assert_allclose(value, want_value, rtol=1e-6)
    for got, want in zip(grads, want_grads):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_the_backend_setting_is_checked():
    with pytest.raises(ValueError, match="config.model.norm_backend='triton'"):
        norm_kernels.add_norm(jnp.ones((1, 1, 4)), jnp.ones((1, 1, 4)), jnp.ones(4), EPS, 1, "triton")
    with pytest.raises(ConfigError, match="config.model.norm_backend"):
        ModelConfig(vocab_size=8, d_model=8, num_layers=1, num_heads=2, num_kv_heads=2, mlp_dim=8,
                    norm_backend="triton").validate()


@pytest.mark.parametrize("rows, chunk", [(8, 2), (4, 4), (8, 8)])
def test_a_program_takes_its_rows_a_chunk_at_a_time(rows, chunk):
    """Both kernels called directly, with a program's rows in 4, 1 and 1 chunks: XLA's values, and one d weight row
    a program."""
    x, delta, weight = _inputs((2, 8, 24))
    d_s, d_n1, d_n2 = (jnp.asarray(np.random.default_rng(i).standard_normal((2, 8, 24)), jnp.float32)
                       for i in (1, 2, 3))
    (want_s, want_normed), vjp = jax.vjp(lambda x, w: norm_kernels.add_norm(x, delta, w, EPS, 2, "xla"), x, weight)
    want_d_x, want_d_weight = vjp((d_s, (d_n1, d_n2)))
    s, n = norm_kernels.add_norm_forward(x, delta, weight, EPS, rows, chunk, num_warps=4)
    np.testing.assert_allclose(s, want_s, rtol=1e-6)
    np.testing.assert_allclose(n, want_normed[0], rtol=1e-5, atol=1e-6)
    d_x, d_weight_rows = norm_kernels.add_norm_backward(s, d_s, weight, (d_n1, d_n2), EPS, rows, chunk, num_warps=4)
    assert d_weight_rows.shape == (2, 8 // rows, 32)
    np.testing.assert_allclose(d_x, want_d_x, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(jnp.sum(d_weight_rows, axis=(0, 1))[:24], want_d_weight, rtol=1e-4, atol=1e-5)
