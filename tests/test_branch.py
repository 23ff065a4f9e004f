"""DroPE runs branched from a RoPE run: the same run as one that trained its own RoPE prefix."""

import json

import numpy as np
import pytest

from drope_jax.errors import ConfigError
from drope_jax.eval import suite
from drope_jax.eval.methods import Run, parse_methods
from drope_jax.train import checkpoint, loop

from test_train import read_metrics, tiny_config


def test_a_run_with_its_rope_control_branches_from_it_and_equals_an_unbranched_run(tmp_path):
    result = loop.run(tiny_config(drope=dict(rope_control=True)), tmp_path / "drope")
    loop.run(tiny_config(), tmp_path / "straight", evaluate=False)  # only their losses are compared
    loop.run(tiny_config(drope=dict(flip_step=None)), tmp_path / "rope", evaluate=False)

    control = tmp_path / "drope" / "rope_control"
    assert 8 in checkpoint.Checkpointer(control / "checkpoints").all_steps()  # kept for the branch
    assert json.loads((control / "config.json").read_text())["plan"]["flip"] is None
    # The control is the RoPE run of the same config, and the branch the DroPE run without its RoPE prefix.
    branched, straight, rope = (read_metrics(p) for p in (tmp_path / "drope", tmp_path / "straight", tmp_path / "rope"))
    control_metrics = read_metrics(control)
    assert sorted(branched) == list(range(9, 13))
    for s in range(1, 13):
        np.testing.assert_allclose(control_metrics[s]["loss"], rope[s]["loss"], rtol=1e-6, err_msg=f"step {s}")
    for s in range(9, 13):
        assert branched[s]["phase"] == "nope"
        np.testing.assert_allclose(branched[s]["loss"], straight[s]["loss"], rtol=1e-5, err_msg=f"step {s}")
        np.testing.assert_allclose(branched[s]["lr"], straight[s]["lr"], rtol=1e-6)
    tempered = f"drope + temperature c={result['temperature']['c']:.2f}"
    assert list(result["perplexity"]) == ["rope (step 8, before the flip)", "rope control (step 12, final)",
                                          "drope (step 12, final)", tempered]
    assert json.loads((tmp_path / "drope" / "config.json").read_text())["plan"]["flip"]["branched_from"] == str(control)
    # launch/evaluate.py's RoPE baselines are the annealed control, not the un-annealed weights at the flip
    settings = suite.Settings(methods=tuple(parse_methods("drope,rope,yarn")), lengths=(1,), niah_tasks=(),
                                   depths=(0.0,), niah_samples=1, ppl_sequences=2, batch_size=2, query_chunk=16,
                                   template="short", tasks=("ppl",))
    methods = suite.evaluate(Run(tmp_path / "drope"), settings, log=lambda _: None)["methods"]
    assert methods["rope"]["weights"] == methods["yarn"]["weights"] == f"{control} step 12"
    assert methods["drope"]["weights"].endswith("drope step 12")


def test_a_branch_needs_a_rope_phase_checkpoint_at_its_flip_and_the_same_data(tmp_path):
    loop.run(tiny_config(drope=dict(flip_step=None), checkpoint=dict(every_steps=5, keep=3)), tmp_path / "rope")
    with pytest.raises(ConfigError, match=r"no checkpoint at step 8.*keep_steps='\(8,\)'"):
        loop.run(tiny_config(branch_from=str(tmp_path / "rope")), tmp_path / "a")
    with pytest.raises(ConfigError, match="config.data.seq_len: 32 there, 16 here"):
        loop.run(tiny_config(branch_from=str(tmp_path / "rope"), data=dict(seq_len=16),
                              drope=dict(flip_step=10, recal_warmup_steps=0)), tmp_path / "b")
    with pytest.raises(ConfigError, match="reset_opt_state"):
        loop.run(tiny_config(branch_from=str(tmp_path / "rope"), drope=dict(reset_opt_state=False)), tmp_path / "c")


def test_a_stopped_control_stops_the_run_and_a_relaunch_finishes_both(tmp_path):
    assert loop.run(tiny_config(drope=dict(rope_control=True), train=dict(stop_at_step=5)), tmp_path) == {}
    assert not (tmp_path / "checkpoints").exists()  # the DroPE run waits for its control
    result = loop.run(tiny_config(drope=dict(rope_control=True)), tmp_path)
    assert "rope control (step 12, final)" in result["perplexity"]
    assert sorted(read_metrics(tmp_path)) == list(range(9, 13))
