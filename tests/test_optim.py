"""The learning-rate schedule on worked numbers, and the weight-decay mask."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from drope_jax import optim, state
from drope_jax.model_config import ModelConfig
from drope_jax.run_config import default_config

PEAK = 1e-3


def optim_cfg(**kw):
    c = default_config().optim
    c.update({"lr": PEAK, "warmup_steps": 10, "min_lr_ratio": 0.1, **kw})
    return c


def lr(step, schedule, total=110, flip=None, rewarm=0, **kw):
    return float(optim.lr_at(step, optim_cfg=optim_cfg(schedule=schedule, **kw), total_steps=total,
                             flip_step=flip, rewarm_steps=rewarm))


def close(a, b):
    return a == pytest.approx(b, rel=1e-5, abs=1e-12)


def test_warmup_is_linear_and_reaches_peak_on_its_last_step():
    for schedule in ("cosine", "wsd", "constant"):
        assert close(lr(0, schedule), PEAK / 10)
        assert close(lr(4, schedule), PEAK * 5 / 10)
        assert close(lr(9, schedule), PEAK)
        assert close(lr(10, schedule), PEAK)


def test_cosine():
    # warmup 10, total 110: the cosine runs over steps 10..110, from the peak to the floor (0.1 peak)
    floor = 0.1 * PEAK
    assert close(lr(10, "cosine"), PEAK)
    assert close(lr(35, "cosine"), floor + (PEAK - floor) * 0.5 * (1 + math.cos(math.pi / 4)))
    assert close(lr(60, "cosine"), 0.55 * PEAK)  # halfway: the mean of peak and floor
    assert close(lr(85, "cosine"), floor + (PEAK - floor) * 0.5 * (1 + math.cos(3 * math.pi / 4)))
    assert close(lr(110, "cosine"), floor)
    assert close(lr(500, "cosine"), floor)  # past the end it stays at the floor
    values = [lr(s, "cosine") for s in range(10, 111)]
    assert all(a >= b for a, b in zip(values, values[1:]))  # never rises after warmup


def test_cosine_with_zero_floor_and_no_warmup():
    assert close(lr(0, "cosine", warmup_steps=0, min_lr_ratio=0.0, total=100), PEAK)
    assert close(lr(50, "cosine", warmup_steps=0, min_lr_ratio=0.0, total=100), PEAK / 2)
    assert lr(100, "cosine", warmup_steps=0, min_lr_ratio=0.0, total=100) == 0.0


def test_wsd():
    # total 100, decay_fraction 0.2: stable at the peak until step 80, then linear to the floor at 100
    kw = dict(total=100, decay_fraction=0.2)
    assert close(lr(50, "wsd", **kw), PEAK)
    assert close(lr(80, "wsd", **kw), PEAK)
    assert close(lr(85, "wsd", **kw), PEAK - 0.9 * PEAK * 0.25)
    assert close(lr(90, "wsd", **kw), 0.55 * PEAK)
    assert close(lr(100, "wsd", **kw), 0.1 * PEAK)
    assert close(lr(1000, "wsd", **kw), 0.1 * PEAK)


def test_constant_ignores_the_floor():
    assert close(lr(10, "constant"), PEAK)
    assert close(lr(109, "constant"), PEAK)
    assert close(lr(10_000, "constant"), PEAK)


@pytest.mark.parametrize("schedule", ["cosine", "wsd", "constant"])
def test_rewarm_after_the_flip_scales_the_schedule(schedule):
    flip, rewarm = 50, 10
    base = {s: lr(s, schedule) for s in range(40, 80)}
    after = {s: lr(s, schedule, flip=flip, rewarm=rewarm) for s in range(40, 80)}
    for s in range(40, flip):
        assert close(after[s], base[s])  # untouched before the flip
    assert close(after[50], base[50] * 1 / 10)  # the flip step itself is the first of the re-warmup
    assert close(after[54], base[54] * 5 / 10)
    assert close(after[59], base[59])  # full schedule again on the re-warmup's last step
    for s in range(60, 80):
        assert close(after[s], base[s])
    # with rewarm_steps=0 the flip changes nothing
    assert all(close(lr(s, schedule, flip=flip, rewarm=0), base[s]) for s in (49, 50, 51))


def test_lr_at_traces_under_jit():
    cfg = optim_cfg(schedule="cosine")
    fn = jax.jit(lambda s: optim.lr_at(s, optim_cfg=cfg, total_steps=110, flip_step=50, rewarm_steps=10))
    for s in (0, 9, 50, 54, 60, 110):
        assert close(float(fn(jnp.int32(s))), lr(s, "cosine", flip=50, rewarm=10))


def test_unknown_schedule_raises():
    with pytest.raises(ValueError, match="schedule"):
        lr(0, "linear")


def test_weight_decay_skips_norm_weights_and_biases():
    cfg = ModelConfig(vocab_size=32, d_model=16, num_layers=2, num_heads=2, num_kv_heads=1, mlp_dim=32,
                      qk_norm="proj", attention_bias=True)
    abstract = state.model_spec(cfg).abstract_params
    rng = np.random.default_rng(0)
    params = jax.tree.map(lambda x: jnp.asarray(rng.standard_normal(x.shape), x.dtype), abstract)
    wd = 0.1
    tx = optim.make_optimizer(optim_cfg(schedule="constant", weight_decay=wd))
    # Adam of zero gradients is zero, so the update is the weight decay alone
    updates = jax.jit(lambda p: tx.update(jax.tree.map(jnp.zeros_like, p), tx.init(p), p)[0])(params)

    norms, biases, decayed = [], [], []

    def check(path, u, p):
        name = jax.tree_util.keystr(path)
        if "norm" in name or "bias" in name:
            (norms if "norm" in name else biases).append(name)
            np.testing.assert_array_equal(np.asarray(u), 0.0, err_msg=name)
        else:
            decayed.append(name)
            np.testing.assert_allclose(np.asarray(u), wd * np.asarray(p), rtol=1e-6, err_msg=name)

    jax.tree_util.tree_map_with_path(check, updates, params)
    # the mask saw every kind of norm weight, and every matrix
    assert sorted(norms) == sorted([
        "['blocks']['attn']['k_norm']['weight']", "['blocks']['attn']['q_norm']['weight']",
        "['blocks']['attn_norm']['weight']", "['blocks']['mlp_norm']['weight']", "['final_norm']['weight']"])
    assert "['embed_VD']" in decayed and "['blocks']['mlp']['down_FD']" in decayed
    assert len(biases) == 3
    assert len(decayed) == len(jax.tree.leaves(params)) - len(norms) - len(biases)
