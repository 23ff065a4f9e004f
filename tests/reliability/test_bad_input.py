"""Bad configs and workdirs: one line naming the fix, before anything compiles, nothing written."""

import json

import pytest

from drope_jax.errors import ConfigError
from drope_jax.train import loop

import harness


@pytest.mark.parametrize("sections, message", [
    (dict(model=dict(num_kv_heads=3)), r"config.model.num_heads \(2\) must be divisible by config.model.num_kv_heads"),
    (dict(model=dict(d_model=30, num_heads=4, num_kv_heads=2)), r"set config.model.head_dim"),
    (dict(drope=dict(flip_step=13)), r"beyond the budget of 12 steps"),
    (dict(train=dict(global_batch_size=12)), r"\(12\) does not divide across the 8 data-parallel devices"),
    (dict(mesh=dict(num_devices=16)), r"config.mesh.num_devices=16: use -1 \(all devices\) or 1..8"),
], ids=["kv-heads", "head-dim", "flip-beyond-budget", "batch-vs-devices", "num-devices"])
def test_config_errors(tmp_path, nothing_lowered, sections, message):
    with pytest.raises(ConfigError, match=message) as e:
        loop.run(harness.config(**sections), tmp_path / "run")
    assert "\n" not in str(e.value)
    assert not (tmp_path / "run").exists()


def test_a_workdir_of_another_model_is_refused_untouched(tmp_path, reference, nothing_lowered):
    workdir = reference.checkpoint_copy(tmp_path, 8)
    before = harness.snapshot(workdir)
    with pytest.raises(ConfigError, match=r"different model \(num_layers: checkpoint 2 vs config 3\)"):
        loop.run(harness.config(model=dict(num_layers=3)), workdir)
    assert harness.snapshot(workdir) == before


def test_the_program_prints_one_line_naming_the_fix(tmp_path, launch):
    misspelt = launch(tmp_path, "--config.optim.lrr=1e-3")
    assert misspelt.finish() == 1
    assert misspelt.lines[-1] == 'error: unknown config key in --config.optim.lrr; did you mean "lr"?'
    bad_shape = launch(tmp_path, "--config.model.num_kv_heads=3")
    assert bad_shape.finish() == 1 and "Traceback" not in bad_shape.output()
    assert bad_shape.lines[-1].startswith("error: config.model.num_heads (2) must be divisible by")
    assert not tmp_path.joinpath("checkpoints").exists()


def test_a_key_can_be_unset_on_the_command_line(tmp_path, launch):
    rope_only = launch(tmp_path / "rope", "--config.drope.flip_step=None", "--config.train.stop_at_step=2")
    assert rope_only.finish() == 0, rope_only.output()
    written = json.loads((tmp_path / "rope" / "config.json").read_text())
    assert written["drope"]["flip_step"] is None and written["plan"]["flip"] is None
    misspelt = launch(tmp_path / "bad", "--config.drope.flipstep=None")
    assert misspelt.finish() == 1
    assert misspelt.lines[-1].startswith("error: unknown config key in --config.drope.flipstep")
