"""bench/pallas_loss.py's kernels compute what drope_jax/model/loss.py computes (in Pallas's interpreter here;
their speed is measured on a GPU by bench/loss_variants.py)."""

import pathlib

import jax
import jax.numpy as jnp
import numpy as np

from drope_jax.model import loss
from drope_jax.run_config import load_module

KERNELS = load_module(pathlib.Path(__file__).parents[1] / "bench" / "pallas_loss.py")
V = 1000  # not a multiple of the blocks below: the last block of every row is masked


def _logits_and_targets():
    rng = np.random.default_rng(0)
    logits_BTV = jnp.asarray(4 * rng.standard_normal((2, 3, V)), jnp.bfloat16)
    return logits_BTV, jnp.asarray(rng.integers(0, V, (2, 3)), jnp.int32)


def test_the_one_read_log_sum_exp_equals_the_two_pass_one_across_blocks():
    logits_BTV, targets_BT = _logits_and_targets()
    want_nll, want_lse = loss.nll_and_lse(logits_BTV, targets_BT)
    got_nll, got_lse = KERNELS.nll_and_lse(logits_BTV, targets_BT)
    np.testing.assert_allclose(got_nll, want_nll, rtol=1e-6)
    for block in (128, 512):  # 8 and 2 blocks a row, each with a running max that moves
        np.testing.assert_allclose(KERNELS.log_sum_exp(logits_BTV.reshape(-1, V), block), want_lse.reshape(-1),
                                   rtol=1e-6)


def test_the_one_pass_backward_equals_loss_py_and_autodiff():
    logits_BTV, targets_BT = _logits_and_targets()
    d_nll_BT = jnp.asarray(np.random.default_rng(1).standard_normal((2, 3)), jnp.float32)
    residuals = (logits_BTV, targets_BT, loss.nll_and_lse(logits_BTV, targets_BT)[1])
    got = KERNELS.nll_backward(residuals, d_nll_BT, block=256)[0]
    np.testing.assert_array_equal(got, loss.nll_backward(residuals, d_nll_BT)[0])
    nll = loss.custom_nll(KERNELS.nll_and_lse, KERNELS.nll_backward)
    _, vjp = jax.vjp(lambda x: nll(x, targets_BT), logits_BTV.astype(jnp.float32))
    _, want_vjp = jax.vjp(lambda x: loss.nll_and_lse(x, targets_BT)[0], logits_BTV.astype(jnp.float32))
    np.testing.assert_allclose(vjp(d_nll_BT)[0], want_vjp(d_nll_BT)[0], rtol=1e-5, atol=1e-6)
