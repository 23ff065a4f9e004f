"""configs/0p5b_16b.py against the paper's Table 4 (arXiv 2512.12167, appendix C.1), value by value, through the
code a run uses (make_plan, make_setup's schedule, the model's abstract parameters); and the SmolLM-360M
recipe of the paper against the official one. Nothing is compiled."""

import math
import pathlib

import jax
import numpy as np
import pytest

from drope_jax.errors import ConfigError
from drope_jax.model.state import model_spec
from drope_jax.run_config import load_module, make_plan
from drope_jax.train import branch, metrics
from drope_jax.train.setup import make_setup

CONFIGS = pathlib.Path(__file__).resolve().parents[1] / "configs"
TOKENS_PER_STEP = 1024 * 1024


def config(name="0p5b_16b", *args):
    return load_module(CONFIGS / f"{name}.py").get_config(*args)


def test_the_architecture_is_table_4s():
    m = make_plan(config()).model
    table_4 = dict(num_layers=24, d_model=896, mlp_dim=4864, num_heads=14, num_kv_heads=2, dim_per_head=64,
                   attention_bias=False, rope_theta=1_000_000.0, tie_embeddings=True, init_std=0.02,
                   compute_dtype="bfloat16", vocab_size=151_936, qk_norm="none")
    assert {k: getattr(m, k) for k in table_4} == table_4


def test_the_parameter_count_is_494m_and_358m_without_the_embedding():
    params = model_spec(make_plan(config()).model).abstract_params
    total = sum(math.prod(x.shape) for x in jax.tree.leaves(params))
    embedding = math.prod(params["embed_VD"].shape)
    assert "unembed_DV" not in params  # tied: the LM head is the embedding
    assert (round(total / 1e6), round((total - embedding) / 1e6)) == (494, 358)
    model = make_plan(config()).model
    assert total == model.num_params()
    # MFU's numerator leaves the LM head out; "with the LM head" adds its 6 x d x V per token
    assert metrics.flops_per_token(model, 1024, lm_head=True) - metrics.flops_per_token(model, 1024) == \
        6 * 896 * 151_936


def test_the_optimizer_is_table_4s():
    o = config().optim
    assert (o.b1, o.b2, o.eps, o.weight_decay, o.grad_clip) == (0.9, 0.95, 1e-8, 0.1, 1.0)
    assert (o.schedule, o.lr, o.warmup_steps) == ("cosine", 3e-4, 520)


def test_budgets_are_in_tokens_and_give_16000_steps_with_the_flip_at_14000():
    c = config()
    assert (c.data.seq_len, c.train.global_batch_size) == (1024, 1024)
    assert c.train.total_steps is None and c.drope.flip_step is None  # given in tokens, as the paper does
    plan = make_plan(c)
    assert plan.tokens_per_step == TOKENS_PER_STEP
    assert (plan.total_steps, plan.flip_step) == (16_000, 14_000)
    assert round(plan.total_tokens / 1e9, 1) == 16.8  # "16.8B tokens (about 16K steps)"
    recal_tokens = (plan.total_steps - plan.flip_step) * plan.tokens_per_step
    assert round(recal_tokens / 1e9, 2) == 2.10  # "2.10B tokens (about 2K steps)"
    assert [plan.phase(s) for s in (13_999, 14_000)] == ["rope", "nope"]


@pytest.fixture(scope="module")
def lr():
    setup = make_setup(config())  # the schedule the train step applies
    return lambda step: float(setup.lr_fn(step))


def test_the_pretraining_lr_is_a_cosine_from_3e_4_after_520_warm_up_steps(lr):
    assert lr(0) == pytest.approx(3e-4 / 520)
    assert lr(519) == pytest.approx(3e-4) and lr(520) == pytest.approx(3e-4)
    assert lr(520 + 7_740) == pytest.approx(1.5e-4, rel=1e-5)  # halfway through the 15,480-step cosine to 0
    # the flip lands inside the decay: 13,480 of 15,480 cosine steps done
    assert lr(13_999) == pytest.approx(3e-4 * 0.5 * (1 + math.cos(math.pi * 13_479 / 15_480)), rel=1e-4)
    assert lr(13_999) < 1.3e-5


def test_the_recalibration_rewarms_to_1e_3_over_70_steps_then_decays_by_a_cosine_to_0(lr):
    assert lr(14_000) == pytest.approx(1e-3 / 70)
    assert lr(14_034) == pytest.approx(1e-3 * 35 / 70)
    assert lr(14_069) == pytest.approx(1e-3) and lr(14_070) == pytest.approx(1e-3)
    assert lr(14_070 + 965) == pytest.approx(5e-4, rel=1e-5)  # halfway through the 1,930-step cosine
    assert lr(14_070 + 1_447) == pytest.approx(1e-3 * 0.5 * (1 + math.cos(math.pi * 1_447 / 1_930)), rel=1e-4)
    assert lr(15_999) < 1e-8 and lr(16_000) == 0.0
    assert lr(14_070) > 3 * lr(520)  # above the pretraining peak


def test_the_flip_in_the_decay_is_accepted_only_explicitly():
    c = config()
    assert c.drope.flip_in_decay and c.drope.reset_opt_state
    c.drope.flip_in_decay = False
    with pytest.raises(ConfigError, match="flip_in_decay"):
        make_plan(c)


def test_a_recalibration_schedule_the_code_does_not_know_names_the_key():
    c = config()
    c.drope.recal_schedule = "linear"
    with pytest.raises(ConfigError, match="config.drope.recal_schedule='linear'"):
        make_plan(c)


def test_the_rope_control_trains_the_same_cosine_to_the_end_and_keeps_the_flip(lr):
    c = config()
    c.drope.rope_control = True
    plan = make_plan(c)
    control = branch.control_config(c, plan)
    control_setup = make_setup(control)
    assert (control_setup.plan.total_steps, control_setup.plan.flip_step) == (16_000, None)
    assert 14_000 in control.checkpoint.keep_steps
    for step in (0, 519, 5_000, 13_999):  # the same LR up to the flip: the branch is this run without its prefix
        assert float(control_setup.lr_fn(step)) == pytest.approx(lr(step))
    assert float(control_setup.lr_fn(15_000)) == pytest.approx(
        3e-4 * 0.5 * (1 + math.cos(math.pi * 14_480 / 15_480)), rel=1e-4)
    assert float(control_setup.lr_fn(16_000)) == 0.0


def test_the_wsd_recipe_keeps_its_shape_and_steps():
    plan = make_plan(config("0p5b_16b_wsd"))
    assert (plan.total_steps, plan.flip_step, plan.tokens_per_step) == (30_517, 26_702, 512 * 1024)
    assert (plan.model.d_model, plan.model.vocab_size, plan.model.num_params()) == (1024, 49_152, 503_366_656)


def test_smollm_360m_paper_recipe_is_table_4s_right_column():
    official, paper = config("smollm_360m_drope", "/m"), config("smollm_360m_drope_paper", "/m")
    assert (official.optim.lr, official.optim.schedule, official.optim.b2, official.optim.weight_decay) == \
        (3e-4, "constant", 0.999, 0.0)
    o = paper.optim
    assert (o.lr, o.schedule, o.warmup_steps, o.b1, o.b2, o.weight_decay) == (1e-3, "cosine", 490, 0.9, 0.95, 0.1)
    assert paper.model.qk_norm == "proj" and paper.init_from == "hf:/m"
    plan = make_plan(paper)
    assert (paper.data.seq_len, paper.train.global_batch_size, plan.flip_step) == (2048, 512, 0)
    assert paper.train.total_tokens == 120_000_000_000 and plan.total_steps == 120_000_000_000 // (512 * 2048)
    setup = make_setup(paper)
    assert float(setup.lr_fn(489)) == pytest.approx(1e-3)
    assert float(setup.lr_fn(plan.total_steps)) == 0.0
    shorter = config("smollm_360m_drope_paper", "/m")
    shorter.train.total_tokens = 30_000_000_000
    assert make_plan(shorter).total_steps == 28_610
    np.testing.assert_equal({k: v for k, v in paper.model.items() if k != "qk_norm"},
                            {k: v for k, v in official.model.items() if k != "qk_norm"})
