"""The hand-written gradient of drope_jax.model.loss equals autodiff of the plain formula."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from drope_jax.model import loss


def reference_nll(logits_BTV, targets_BT):
    logits = logits_BTV.astype(jnp.float32)
    log_probs = jax.nn.log_softmax(logits, axis=-1)
    return -jnp.take_along_axis(log_probs, targets_BT[..., None], axis=-1)[..., 0]


@pytest.mark.parametrize("dtype, tol", [(jnp.float32, 1e-6), (jnp.bfloat16, 1e-2)])
def test_token_nll_value_and_gradient_match_autodiff(dtype, tol):
    k1, k2, k3 = jax.random.split(jax.random.key(0), 3)
    logits = (4.0 * jax.random.normal(k1, (2, 5, 37))).astype(dtype)
    targets = jax.random.randint(k2, (2, 5), 0, 37)
    weights = jax.random.uniform(k3, (2, 5))  # a non-uniform incoming gradient

    def weighted(fn, x):
        return jnp.sum(fn(x, targets) * weights)

    value, grad = jax.value_and_grad(lambda x: weighted(loss.token_nll, x))(logits)
    ref_value, ref_grad = jax.value_and_grad(lambda x: weighted(reference_nll, x.astype(jnp.float32)))(logits)
    assert grad.dtype == dtype
    np.testing.assert_allclose(value, ref_value, rtol=1e-6)
    np.testing.assert_allclose(np.asarray(grad, np.float32), ref_grad, atol=tol)
    # Softmax minus one-hot: each row's gradient sums to zero.
    np.testing.assert_allclose(np.asarray(grad, np.float32).sum(-1), 0.0, atol=tol * 5)
