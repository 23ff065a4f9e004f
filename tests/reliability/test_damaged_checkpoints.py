"""Checkpoints damaged after they were written (flipped bytes that Orbax reads without complaint, a
truncated file, a deleted one): refused by name, or skipped with config.checkpoint.fallback_on_corrupt;
the run then continues from the newest intact one exactly as an uninterrupted run."""

import re

import pytest

from drope_jax.train import branch, checkpoint, fingerprint, setup

import harness
from damage import array_files, change_a_digit, damage_silently

FALLBACK = "--config.checkpoint.fallback_on_corrupt=true"
STOP = "--config.train.stop_at_step=11"  # no final evaluation: not what this test is about


def test_every_kind_of_damage_is_refused_by_name_and_skipped_with_the_fallback(tmp_path, launch, reference):
    workdir = reference.checkpoint_copy(tmp_path, 2, 4, 6, 8, 10, 12)
    ckpts = workdir / "checkpoints"
    intact = reference.workdir / "checkpoints"  # read there: Orbax caches by path what this process read
    params = damage_silently(ckpts / "12", "params/", tmp_path / "trials", intact / "12")
    moments = damage_silently(ckpts / "10", "opt_state/", tmp_path / "trials", intact / "10")
    change_a_digit(ckpts / "8" / "data" / "process_0-of-1.json")
    truncated = array_files(ckpts / "6")[0]
    truncated.write_bytes(truncated.read_bytes()[:1000])
    array_files(ckpts / "4")[0].unlink()
    before = harness.snapshot(ckpts)

    # Conversion, evaluation and branching read parameters through restore_params: verified the same way.
    tiny = setup.make_setup(harness.config())
    with pytest.raises(fingerprint.Mismatch, match=re.escape(params[0])):
        checkpoint.Checkpointer(ckpts).restore_params(12, tiny.spec.placed_params(tiny.mesh))
    with pytest.raises(fingerprint.Mismatch, match=re.escape(params[0])):
        branch.params_at(workdir, 12, tiny.spec, tiny.mesh)

    run = launch(workdir, STOP)
    assert run.finish() == 1
    assert re.fullmatch(rf"error: checkpoint {ckpts}/12 does not match the fingerprints saved with it: "
                        rf"{re.escape(', '.join(params))} \(\d+ of \d+ arrays read\) changed after it was written .*"
                        r"no checkpoint was changed\. Move it aside, or set --config\.checkpoint\.fallback_on_corrupt="
                        r"true to resume from step 10", run.lines[-1]), run.output()
    assert harness.snapshot(ckpts) == before

    run = launch(workdir, STOP, FALLBACK)
    assert run.finish() == 0, run.output()
    out = run.output()
    flaws = {12: re.escape(", ".join(params)), 10: re.escape(", ".join(moments)),
             8: r"the data iterator's process_0-of-1\.json changed", 6: r"cannot be read \(ValueError: .*Error reading",
             4: r"cannot be read \(ValueError: .*Error reading"}
    for step, flaw in flaws.items():
        assert re.search(rf"checkpoint {ckpts}/{step} .*{flaw}.*; renamed it to {step}\.unreadable-\d+ and falling "
                         rf"back to step {step - 2}", out), (step, out)
    assert f"resumed from {ckpts} at step 2 " in out
    assert len(list(ckpts.glob("*.unreadable-*"))) == len(flaws)  # set aside, not deleted
    harness.assert_losses_equal(workdir, {s: reference.losses[s] for s in range(3, 12)})
