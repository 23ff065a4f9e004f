"""KV-cache greedy decoding equals recomputing the whole sequence, for every position encoding."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from drope_jax import sharding
from drope_jax.eval import decode
from drope_jax.model import state
from drope_jax.model.config import ModelConfig
from drope_jax.model.positions import PosEncoding

CFG = ModelConfig(vocab_size=53, d_model=32, num_layers=4, num_heads=4, num_kv_heads=2, mlp_dim=48,
                  qk_norm="proj", compute_dtype="float32").validate()
PROMPT, NEW = 19, 7

ENCODINGS = {
    "rope": PosEncoding("rope"),
    "nope": PosEncoding("nope"),
    "alibi": PosEncoding("alibi"),
    "rnope": PosEncoding("rope", nope_every=2),
    "rnope_swa": PosEncoding("rope", nope_every=2, window=6),
    "alibi_swa_pattern": PosEncoding("alibi", nope_every=2, window=5),
    "pi": PosEncoding("rope", scaling="linear", factor=2.0),
    "ntk": PosEncoding("rope", scaling="ntk", factor=2.0),
    "yarn": PosEncoding("rope", scaling="yarn", factor=4.0, original_length=8),
    "nope_log_n": PosEncoding("nope", log_n=True, original_length=8),
}


@functools.cache
def setup():
    spec = state.model_spec(CFG)
    params = state.init_params(spec, 0, sharding.make_mesh(devices=jax.devices()[:1]))
    params = jax.tree.map(lambda x: x * 8 if x.ndim == 4 else x, params)  # sharper attention, so masks matter
    return spec, params


@pytest.mark.parametrize("name", ENCODINGS)
def test_cached_decoding_equals_full_recomputation(name):
    spec, params = setup()
    pos = ENCODINGS[name]
    prompt = jax.random.randint(jax.random.key(3), (2, PROMPT), 0, CFG.vocab_size)
    tokens, logits = decode.greedy_generate(params, prompt, spec=spec, pos=pos, max_new_tokens=NEW,
                                            return_logits=True, query_chunk=8)
    full = jnp.concatenate([prompt, tokens], axis=1)
    expected = jax.jit(state.apply, static_argnums=(0, 3))(spec, params, full, pos)[:, PROMPT - 1:-1]
    np.testing.assert_allclose(logits, expected, atol=1e-4)
    # causal: the full pass's logits at each position are those a step-by-step recomputation would see
    np.testing.assert_array_equal(tokens, jnp.argmax(expected, axis=-1))

