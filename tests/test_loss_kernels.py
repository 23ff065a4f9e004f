"""drope_jax/model/loss_kernels.py's Pallas kernels compute what loss.py's XLA passes compute (in Pallas's
interpreter here; bench/loss_kernels.py times them on a GPU), on one device and under an 8-device mesh, and
config.model.loss_backend picks them where it should."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from drope_jax import sharding
from drope_jax.errors import ConfigError
from drope_jax.model import loss, loss_kernels
from drope_jax.model.config import ModelConfig

V = 1000  # not a multiple of the blocks below: the last block of every row is masked


def _logits_and_targets(b=2, t=3):
    rng = np.random.default_rng(0)
    logits_BTV = jnp.asarray(4 * rng.standard_normal((b, t, V)), jnp.bfloat16)
    return logits_BTV, jnp.asarray(rng.integers(0, V, (b, t)), jnp.int32)


def test_the_one_read_log_sum_exp_equals_the_two_pass_one_across_blocks():
    logits_BTV, targets_BT = _logits_and_targets()
    want_nll, want_lse = loss.nll_and_lse(logits_BTV, targets_BT)
    got_nll, got_lse = loss_kernels.nll_and_lse(logits_BTV, targets_BT)
    np.testing.assert_allclose(got_nll, want_nll, rtol=1e-6)
    for block in (128, 512):  # 8 and 2 blocks a row, each with a running max that moves
        np.testing.assert_allclose(loss_kernels.log_sum_exp(logits_BTV.reshape(-1, V), block),
                                   want_lse.reshape(-1), rtol=1e-6)


def test_the_one_pass_backward_equals_loss_py_and_autodiff():
    logits_BTV, targets_BT = _logits_and_targets()
    d_nll_BT = jnp.asarray(np.random.default_rng(1).standard_normal((2, 3)), jnp.float32)
    residuals = (logits_BTV, targets_BT, loss.nll_and_lse(logits_BTV, targets_BT)[1])
    got = loss_kernels.nll_backward(residuals, d_nll_BT, block=256)[0]
    np.testing.assert_array_equal(got, loss.nll_backward(residuals, d_nll_BT)[0])
    _, vjp = jax.vjp(lambda x: loss.pallas_token_nll(x, targets_BT), logits_BTV.astype(jnp.float32))
    _, want_vjp = jax.vjp(lambda x: loss.nll_and_lse(x, targets_BT)[0], logits_BTV.astype(jnp.float32))
    np.testing.assert_allclose(vjp(d_nll_BT)[0], want_vjp(d_nll_BT)[0], rtol=1e-5, atol=1e-6)


def _mean_nll_and_grad(backend, logits_BTV, targets_BT):
    return jax.jit(jax.value_and_grad(lambda x: jnp.mean(loss.token_nll(x, targets_BT, backend))))(logits_BTV)


def test_the_kernels_under_an_8_device_mesh_give_the_xla_loss_and_gradient():
    """The kernels run per device under shard_map (batch over data x fsdp), so each row must stay whole."""
    logits_BTV, targets_BT = _logits_and_targets(b=8, t=2)
    want_value, want_grad = _mean_nll_and_grad("xla", logits_BTV, targets_BT)
    with jax.set_mesh(sharding.make_mesh(data=2, fsdp=4)):
        value, grad = _mean_nll_and_grad("pallas", logits_BTV, targets_BT)
        np.testing.assert_allclose(value, want_value, rtol=1e-6)
        np.testing.assert_array_equal(grad, want_grad)


def test_the_backend_choice_names_the_fix_when_the_kernels_cannot_run():
    shape = (8, 2, V)
    assert loss.loss_implementation("auto", shape) == "xla"  # this CPU is no GPU
    assert loss.loss_implementation("pallas", shape) == "pallas"
    with pytest.raises(ValueError, match="config.model.loss_backend"):
        loss.loss_implementation("triton", shape)
    with jax.set_mesh(sharding.make_mesh(fsdp=4, tensor=2)):
        assert loss.loss_implementation("auto", shape) == "xla"
        with pytest.raises(ValueError, match="splits the vocabulary"):
            loss.loss_implementation("pallas", shape)
    with pytest.raises(ConfigError, match="config.model.loss_backend"):
        ModelConfig(vocab_size=V, d_model=8, num_layers=1, num_heads=2, num_kv_heads=2, mlp_dim=8,
                    loss_backend="triton").validate()


def test_auto_takes_the_kernels_on_a_single_gpu_only(monkeypatch):
    monkeypatch.setattr(sharding, "target_platform", lambda: "gpu")
    shape = (8, 2, V)
    with jax.set_mesh(sharding.make_mesh(devices=jax.devices()[:1])):
        assert loss.loss_implementation("auto", shape) == "pallas"
    for mesh in (sharding.make_mesh(data=2, fsdp=4), sharding.make_mesh(fsdp=4, tensor=2)):
        with jax.set_mesh(mesh):
            assert loss.loss_implementation("auto", shape) == "xla"
    assert loss.loss_implementation("auto", shape) == "xla"  # 8 devices and no mesh: the rows may be spread

