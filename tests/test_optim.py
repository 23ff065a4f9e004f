"""The learning-rate schedule on worked numbers, and the weight-decay mask."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from drope_jax.model import state
from drope_jax.model.config import ModelConfig
from drope_jax.run_config import default_config
from drope_jax.train import optim

PEAK = 1e-3


def optim_cfg(**kw):
    c = default_config().optim
    c.update({"lr": PEAK, "warmup_steps": 10, "min_lr_ratio": 0.1, **kw})
    return c


def drope_cfg(**kw):
    c = default_config().drope
    c.update(kw)
    return c


def lr(step, schedule, total=110, flip=None, recal=None, **kw):
    return float(optim.lr_at(step, optim_cfg=optim_cfg(schedule=schedule, **kw), total_steps=total,
                             flip_step=flip, drope_cfg=recal))


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
def test_the_recalibration_has_a_schedule_of_its_own(schedule):
    # flip at 50 of 110: 60 recalibration steps at 2e-3, 10 warm-up, decay over the last 15 (25%) to 0.2 x 2e-3
    recal = drope_cfg(recal_lr=2e-3, recal_warmup_steps=10, recal_decay_fraction=0.25, recal_min_lr_ratio=0.2)
    for s in range(0, 50):  # untouched before the flip
        assert close(lr(s, schedule, flip=50, recal=recal), lr(s, schedule))
    assert close(lr(50, schedule, flip=50, recal=recal), 2e-3 / 10)  # the flip step is the first warm-up step
    assert close(lr(54, schedule, flip=50, recal=recal), 2e-3 * 5 / 10)
    for s in (59, 60, 80, 95):  # constant from the end of the warm-up to the decay
        assert close(lr(s, schedule, flip=50, recal=recal), 2e-3)
    floor = 0.2 * 2e-3
    assert close(lr(100, schedule, flip=50, recal=recal), 2e-3 - (2e-3 - floor) * 5 / 15)
    assert close(lr(109, schedule, flip=50, recal=recal), 2e-3 - (2e-3 - floor) * 14 / 15)
    assert close(lr(110, schedule, flip=50, recal=recal), floor)


@pytest.mark.parametrize("schedule", ["cosine", "wsd"])
def test_a_cosine_recalibration_warms_up_then_decays_to_its_floor(schedule):
    # flip at 50 of 110: 10 warm-up steps to 2e-3, then a cosine over the other 50 to 0.2 x 2e-3;
    # recal_decay_fraction is the WSD's alone
    peak, floor = 2e-3, 0.2 * 2e-3
    recal = drope_cfg(recal_schedule="cosine", recal_lr=peak, recal_warmup_steps=10, recal_min_lr_ratio=0.2,
                      recal_decay_fraction=0.9)
    for s in range(0, 50):
        assert close(lr(s, schedule, flip=50, recal=recal), lr(s, schedule))
    assert close(lr(50, schedule, flip=50, recal=recal), peak / 10)
    assert close(lr(59, schedule, flip=50, recal=recal), peak)
    assert close(lr(60, schedule, flip=50, recal=recal), peak)
    assert close(lr(70, schedule, flip=50, recal=recal), floor + (peak - floor) * 0.5 * (1 + math.cos(math.pi / 5)))
    assert close(lr(85, schedule, flip=50, recal=recal), (peak + floor) / 2)
    assert close(lr(110, schedule, flip=50, recal=recal), floor)
    values = [lr(s, schedule, flip=50, recal=recal) for s in range(60, 111)]
    assert all(a > b for a, b in zip(values, values[1:]))


def test_unset_recalibration_values_come_from_the_pretraining_optimizer():
    recal = drope_cfg(recal_warmup_steps=0, recal_decay_fraction=0.0)  # lr and floor: config.optim's
    assert all(close(lr(s, "wsd", flip=50, recal=recal), PEAK) for s in (50, 80, 109))
    recal = drope_cfg(recal_warmup_steps=0, recal_decay_fraction=1.0)
    assert close(lr(80, "wsd", flip=50, recal=recal), PEAK - 0.9 * PEAK * 30 / 60)  # min_lr_ratio 0.1


def test_flip_at_step_zero_keeps_the_pretraining_schedule():
    # NoPE from the first step (a from-scratch NoPE run, or a recalibration seeded by init_from)
    recal = drope_cfg(recal_lr=5.0)
    assert all(close(lr(s, "cosine", flip=0, recal=recal), lr(s, "cosine")) for s in (0, 9, 60, 110))


def test_lr_at_traces_under_jit():
    cfg, recal = optim_cfg(schedule="cosine"), drope_cfg(recal_warmup_steps=10)
    fn = jax.jit(lambda s: optim.lr_at(s, optim_cfg=cfg, total_steps=110, flip_step=50, drope_cfg=recal))
    for s in (0, 9, 50, 54, 60, 110):
        assert close(float(fn(jnp.int32(s))), lr(s, "cosine", flip=50, recal=recal))


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


@pytest.mark.parametrize("own_group", [True, False])
def test_qk_norm_gains_switched_on_at_the_flip_take_a_first_step_of_the_lr(own_group):
    """Gains that got no gradient for 2,800 RoPE-phase steps: with moments and a bias-correction count of
    their own, their first Adam update is 1 (x LR); sharing the global count it would be ~3.1."""
    cfg = ModelConfig(vocab_size=32, d_model=16, num_layers=2, num_heads=2, num_kv_heads=1, mlp_dim=32,
                      qk_norm="proj")
    params = jax.tree.map(lambda x: jnp.ones(x.shape, x.dtype), state.model_spec(cfg).abstract_params)
    is_gain = lambda path: "q_norm" in path or "k_norm" in path  # noqa: E731
    tx = optim.make_optimizer(optim_cfg(grad_clip=0.0), starts_at_flip=is_gain if own_group else None)

    def grads(seed, gains_on):
        leaves = jax.tree_util.tree_flatten_with_path(params)[0]
        keys = jax.random.split(jax.random.key(seed), len(leaves))
        g = [jax.random.normal(k, p.shape) * (gains_on or not is_gain(jax.tree_util.keystr(path)))
             for (path, p), k in zip(leaves, keys)]
        return jax.tree.unflatten(jax.tree.structure(params), g)

    rope_phase_grads = grads(0, False)  # drawn once: the other parameters' gradients do not matter here

    @jax.jit
    def rope_phase(opt_state):
        return jax.lax.fori_loop(0, 2800, lambda i, s: tx.update(rope_phase_grads, s, params)[1], opt_state)

    opt_state = rope_phase(tx.init(params))
    if own_group:  # the flip with carried moments restarts the gains' group; without it there is none to restart
        opt_state = optim.restart_moments(tx, opt_state, params, everything=False)
    updates, _ = tx.update(grads(10**6, True), opt_state, params)
    leaves = jax.tree_util.tree_flatten_with_path(updates)[0]
    gain_steps = np.concatenate([np.abs(np.asarray(u)).ravel() for path, u in leaves
                                 if is_gain(jax.tree_util.keystr(path))])
    if own_group:
        np.testing.assert_allclose(gain_steps, 1.0, rtol=1e-3)
    else:  # (1 - 0.9) / sqrt((1 - 0.999) / (1 - 0.999**2801)): the oversized step the group prevents
        np.testing.assert_allclose(gain_steps, 0.1 / math.sqrt(0.001 / (1 - 0.999 ** 2801)), rtol=1e-3)
        assert gain_steps.min() > 3.0
