"""The softmax temperature past the context: its formula, its fit, and a logit scale that programs take as data."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from drope_jax import sharding
from drope_jax.eval import temperature
from drope_jax.model import positions, state
from drope_jax.model.config import ModelConfig
from drope_jax.model.positions import NOPE, PosEncoding, temperature_beta


def test_beta_is_one_within_the_context_and_grows_with_the_log_of_the_length():
    assert temperature_beta(0.412, 1) == temperature_beta(0.412, 0.5) == 1.0
    assert temperature_beta(0.412, 2) == pytest.approx(1 + 0.412 * math.log(2))
    assert temperature_beta(0.0, 8) == 1.0
    assert temperature.encoding(0.5, 4) == PosEncoding("nope", logit_scale=1 + 0.5 * math.log(4))
    assert temperature.encoding(0.5, 1) == NOPE  # in context: the raw encoding itself, so equal cells are shared


@pytest.mark.parametrize("best", [0.0, 0.137, 0.412, 1.2])
def test_fit_finds_the_minimum_and_tries_no_temperature(best):
    calls = []

    def nll_at(c):
        calls.append(c)
        return {2: (c - best) ** 2 + 1.0, 4: 2 * (c - best) ** 2 + 3.0}

    fitted = temperature.fit(nll_at, tuning_documents=5)
    assert abs(fitted.c - best) <= temperature.C_TOLERANCE
    assert len(calls) == len(set(calls)) <= 20  # every candidate computed once
    assert fitted.tuning_nll_raw == nll_at(0.0) and fitted.tuning_nll == nll_at(fitted.c)
    assert fitted.how == "fitted" and fitted.tuning_documents == 5
    record = fitted.to_json((1, 2, 4))
    assert record["beta"] == {"1": 1.0, "2": fitted.beta(2), "4": fitted.beta(4)}
    assert record["tuning_ppl_raw"]["2"] == pytest.approx(math.exp(nll_at(0.0)[2]))


def test_fit_keeps_no_temperature_when_every_c_is_worse():
    fitted = temperature.fit(lambda c: {2: 1.0 + c})
    assert fitted.c == 0.0


def _model():
    cfg = ModelConfig(vocab_size=61, d_model=32, num_layers=2, num_heads=4, num_kv_heads=2, mlp_dim=64,
                      compute_dtype="float32", init_std=0.3).validate()
    spec = state.model_spec(cfg)
    params = state.init_params(spec, 0, sharding.make_mesh(devices=jax.devices()[:1]))
    tokens = jax.random.randint(jax.random.key(1), (2, 40), 0, 61)
    return spec, params, tokens


def test_a_logit_scale_as_data_is_the_static_one_and_one_changes_no_bit():
    spec, params, tokens = _model()

    def logits(pos, as_data):
        table = None
        if as_data:
            pos, table = positions.as_data(pos, spec.cfg.dim_per_head, spec.cfg.rope_theta)
        return np.asarray(jax.jit(lambda p, t, tab: state.apply(spec, p, t, pos, pos_table=tab))(params, tokens, table))

    raw = logits(NOPE, as_data=False)
    np.testing.assert_array_equal(logits(NOPE, as_data=True), raw)  # a traced 1.0 multiplies q exactly
    hot = PosEncoding("nope", logit_scale=1.7)
    np.testing.assert_allclose(logits(hot, as_data=True), logits(hot, as_data=False), rtol=1e-6, atol=1e-6)
    assert np.abs(logits(hot, as_data=False) - raw).max() > 1e-2  # and the scale does change the logits


def test_the_scale_multiplies_every_attention_logit():
    """Scaling q by beta is the softmax at scale beta / sqrt(head_dim): checked against attention written out."""
    q_BTNH, k_BTKH, v_BTKH = (jax.random.normal(jax.random.key(i), (1, 6, 2, 8)) for i in range(3))
    beta = 1.6
    scale_BT = positions.query_scale(PosEncoding("nope", logit_scale=beta), jnp.zeros((1, 6), jnp.int32))
    out = jax.nn.dot_product_attention(q_BTNH * scale_BT, k_BTKH, v_BTKH, is_causal=True)
    logits_NTS = jnp.einsum("TNH,SNH->NTS", q_BTNH[0], k_BTKH[0]) * beta / math.sqrt(8)
    logits_NTS = jnp.where(jnp.tril(jnp.ones((6, 6), bool)), logits_NTS, -jnp.inf)
    want = jnp.einsum("NTS,SNH->TNH", jax.nn.softmax(logits_NTS, -1), v_BTKH[0])
    np.testing.assert_allclose(out[0], want, rtol=1e-5, atol=1e-5)
