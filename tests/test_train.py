"""The training loop: the flip, resume, refusals and init_from, on a tiny model over 8 simulated devices."""

import json
import os

import jax
import numpy as np
import pytest

from drope_jax.errors import ConfigError
from drope_jax.run_config import default_config, make_plan
from drope_jax.train import checkpoint, loop


def tiny_config(**sections):
    c = default_config()
    c.model.update(vocab_size=257, d_model=32, num_layers=2, num_heads=2, num_kv_heads=1, mlp_dim=64,
                   compute_dtype="float32")
    c.data.update(seq_len=32)
    c.train.update(global_batch_size=8, total_steps=12)
    c.optim.update(lr=3e-3, warmup_steps=2)
    c.drope.update(flip_step=8, recal_warmup_steps=2)
    c.checkpoint.update(every_steps=4, keep=1)
    c.log.every_steps = 1
    c.eval.update(lengths=(1, 2), num_sequences=2, batch_size=2)
    for name, values in sections.items():
        if isinstance(values, dict):
            c[name].update(values)
        else:
            c[name] = values
    return c


def read_metrics(workdir) -> dict[int, dict]:
    """The last record of each step (a resumed run logs some steps twice)."""
    records = {}
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        for line in f:
            r = json.loads(line)
            records[r["step"]] = r
    return records


def test_flip_happens_at_the_configured_step_and_loss_falls(tmp_path):
    result = loop.run(tiny_config(train=dict(total_steps=24), drope=dict(flip_step=16)), tmp_path)
    m = read_metrics(tmp_path)
    assert sorted(m) == list(range(1, 25))
    assert [m[s]["phase"] for s in range(1, 25)] == ["rope"] * 16 + ["nope"] * 8
    assert np.mean([m[s]["loss"] for s in (14, 15, 16)]) < m[1]["loss"] - 0.5
    # The last RoPE-phase checkpoint survives keep=1; the final eval covers it and the final model.
    assert {16, 24} <= set(checkpoint.Checkpointer(tmp_path / "checkpoints").all_steps())
    c = result["temperature"]["c"]  # and the final model again with its fitted temperature
    assert list(result["perplexity"]) == ["rope (step 16, before the flip)", "drope (step 24, final)",
                                          f"drope + temperature c={c:.2f}"]
    assert all(np.isfinite(v) for r in result["perplexity"].values() for v in r.values())
    assert json.loads((tmp_path / "eval.json").read_text()) == result


@pytest.mark.parametrize("stops", [(5, 10), (8,)], ids=["before-and-across-flip", "at-flip"])
def test_resume_gives_the_same_losses_as_an_uninterrupted_run(tmp_path, stops):
    sections = dict(drope=dict(flip_step=8))
    loop.run(tiny_config(**sections), tmp_path / "straight")
    for stop in stops:
        assert loop.run(tiny_config(train=dict(stop_at_step=stop), **sections), tmp_path / "resumed") == {}
    loop.run(tiny_config(**sections), tmp_path / "resumed")
    straight, resumed = read_metrics(tmp_path / "straight"), read_metrics(tmp_path / "resumed")
    assert sorted(resumed) == sorted(straight) == list(range(1, 13))
    for s in straight:
        assert resumed[s]["phase"] == straight[s]["phase"]
        np.testing.assert_allclose(resumed[s]["loss"], straight[s]["loss"], rtol=1e-6, err_msg=f"step {s}")


def test_a_workdir_of_another_model_is_refused_and_not_touched(tmp_path):
    loop.run(tiny_config(train=dict(stop_at_step=4)), tmp_path)
    before = sorted((p.relative_to(tmp_path), p.stat().st_mtime_ns) for p in (tmp_path / "checkpoints").rglob("*"))
    with pytest.raises(ConfigError, match="num_layers: checkpoint 2 vs config 3"):
        loop.run(tiny_config(model=dict(num_layers=3)), tmp_path)
    after = sorted((p.relative_to(tmp_path), p.stat().st_mtime_ns) for p in (tmp_path / "checkpoints").rglob("*"))
    assert before == after


@pytest.mark.parametrize("sections, message", [
    (dict(model=dict(num_heads=4, num_kv_heads=3)), "num_kv_heads"),
    (dict(drope=dict(flip_step=13)), "beyond the budget"),
    (dict(drope=dict(flip_step=None, flip_tokens=10**9)), "beyond the budget"),
    (dict(train=dict(global_batch_size=4)), "data-parallel devices"),
    (dict(train=dict(total_tokens=4096)), "only one of config.train.total_tokens"),
    (dict(drope=dict(qk_norm_at_flip=True)), "qk_norm"),
])
def test_bad_config_is_refused_before_anything_runs(tmp_path, sections, message):
    with pytest.raises(ConfigError, match=message):
        loop.run(tiny_config(**sections), tmp_path)
    assert not (tmp_path / "metrics.jsonl").exists()


def test_budgets_in_tokens_become_steps():
    c = tiny_config(train=dict(total_steps=None, total_tokens=8 * 32 * 100 + 5), optim=dict(decay_fraction=0.1),
                    drope=dict(flip_step=None, flip_tokens=8 * 32 * 88))
    plan = make_plan(c)
    assert (plan.total_steps, plan.flip_step, plan.tokens_per_step) == (100, 88, 256)
    assert [plan.phase(s) for s in (87, 88)] == ["rope", "nope"]


@pytest.mark.parametrize("reset", [True, False], ids=["fresh-moments", "carried-moments"])
def test_qk_norm_switched_on_at_the_flip_starts_at_one(tmp_path, reset):
    c = tiny_config(model=dict(qk_norm="proj"), drope=dict(qk_norm_at_flip=True, reset_opt_state=reset))
    loop.run(c, tmp_path)
    ckpt = checkpoint.Checkpointer(tmp_path / "checkpoints")
    spec_params = _abstract_params(c)
    at_flip = ckpt.restore_params(8, spec_params)["blocks"]["attn"]["q_norm"]["weight"]
    final = ckpt.restore_params(12, spec_params)["blocks"]["attn"]["q_norm"]["weight"]
    np.testing.assert_array_equal(np.asarray(at_flip), 1.0)  # inert, untouched during the RoPE phase
    assert not np.allclose(np.asarray(final), 1.0)  # trained after the flip
    # Adam's first step is +-1 x LR per gain (their own moments and count): 4 NoPE steps move each by at most
    # the sum of those LRs, where a shared count after 8 RoPE steps would make them smaller, and after 2,800 ~3x
    lrs = [read_metrics(tmp_path)[s]["lr"] for s in range(9, 13)]
    assert np.abs(np.asarray(final) - 1.0).max() <= sum(lrs) * 1.0001
    config_json = json.loads((tmp_path / "config.json").read_text())
    assert config_json["plan"]["flip"]["adam_moments"] == ("fresh" if reset else "carried")
    assert config_json["plan"]["flip"]["qk_norm_switched_on"] is True


def test_init_from_names_missing_parameters_and_refuses_mismatches(tmp_path, capsys):
    loop.run(tiny_config(train=dict(stop_at_step=4)), tmp_path / "base")
    c = tiny_config(model=dict(qk_norm="proj"), train=dict(total_steps=2), drope=dict(flip_step=0))
    c.init_from = str(tmp_path / "base")
    loop.run(c, tmp_path / "recal")
    out = capsys.readouterr().out
    assert "blocks/attn/q_norm/weight" in out and "initialized fresh" in out
    bad = tiny_config(model=dict(mlp_dim=96))
    bad.init_from = str(tmp_path / "base")
    with pytest.raises(ConfigError, match="blocks/mlp/down_FD"):
        loop.run(bad, tmp_path / "bad")


def _abstract_params(c):
    from drope_jax import sharding
    from drope_jax.model.state import model_spec
    mesh = sharding.make_mesh()
    spec = model_spec(make_plan(c).model)
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                        spec.abstract_params, spec.shardings(mesh))


def test_checkpoints_by_time_beside_those_by_step(tmp_path):
    """every_minutes saves when that long has passed, checked every log step; 0 leaves only the step saves."""
    steps = {}
    for minutes in (0.0, 1e-9):
        workdir = tmp_path / str(minutes)
        config = tiny_config(drope={"flip_step": None}, checkpoint={"every_steps": 1000, "keep": 10,
                                                                     "every_minutes": minutes},
                             log={"every_steps": 3}, eval={"lengths": (1,)})
        loop.run(config, workdir, evaluate=False)
        steps[minutes] = sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())
    assert steps == {0.0: [12], 1e-9: [3, 6, 9, 12]}
