"""Checkpoints damaged after they were written (flipped bytes that Orbax reads without complaint, a
truncated file, a deleted one): refused by name, or skipped with config.checkpoint.fallback_on_corrupt;
the run then continues from the newest intact one exactly as an uninterrupted run."""

import json
import re
import shutil

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from drope_jax.train import branch, checkpoint, fingerprint, setup

import harness

FALLBACK = "--config.checkpoint.fallback_on_corrupt=true"
STOP = "--config.train.stop_at_step=11"  # no final evaluation: not what these tests are about


def arrays_as_orbax_reads_them(step_dir) -> dict[str, bytes]:
    """Every array of checkpoint ``step_dir``'s state, read by Orbax alone (no fingerprints), as bytes. Orbax
    caches what it read by path, so a path is read once: before or after it was damaged, not both."""
    state = ocp.PyTreeCheckpointer().restore(str(step_dir / "state"))
    return {path: np.asarray(x).tobytes() for path, x in zip(fingerprint.leaf_paths(state), jax.tree.leaves(state))}


def flip_middle_bytes(path, count=64) -> None:
    """Flips the lowest bit of ``count`` bytes in the middle of the file at ``path``."""
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    for i in range(middle - count // 2, middle + count // 2):
        data[i] ^= 1
    path.write_bytes(bytes(data))


def array_files(step_dir):
    """The files holding the arrays' chunks, largest first."""
    return sorted((step_dir / "state").glob("ocdbt.process_*/d/*"), key=lambda p: p.stat().st_size, reverse=True)


def damage_silently(reference, step_dir, prefix: str, scratch) -> list[str]:
    """Flips 64 bytes in the middle of the first array file of ``step_dir`` (a copy of one of ``reference``'s
    checkpoints) where that changes arrays under ``prefix`` (and no others) while Orbax reads them without
    complaint, as in the issue; returns the arrays changed. Each candidate is tried on a copy in ``scratch``."""
    intact = arrays_as_orbax_reads_them(reference.workdir / "checkpoints" / step_dir.name)
    for i, path in enumerate(array_files(step_dir)):
        trial = scratch / f"{step_dir.name}-{i}"
        shutil.copytree(step_dir, trial)
        flip_middle_bytes(trial / path.relative_to(step_dir))
        try:
            read = arrays_as_orbax_reads_them(trial)
            changed = [name for name in intact if read[name] != intact[name]]
        except ValueError:  # damage that Orbax notices: not the case under test
            changed = []
        if changed and all(name.startswith(prefix) for name in changed):
            flip_middle_bytes(path)
            return changed
    raise AssertionError(f"no array file of {step_dir} holds {prefix} arrays Orbax would read damaged")


def change_a_digit(path) -> None:
    """The data iterator's state, still valid JSON, with one position changed."""
    text = path.read_text()
    at = next(i for i in range(len(text) // 2, len(text)) if text[i] in "0123456789")
    changed = text[:at] + str((int(text[at]) + 1) % 10) + text[at + 1:]
    assert json.loads(changed) != json.loads(text)
    path.write_text(changed)


def test_every_kind_of_damage_is_refused_by_name_and_skipped_with_the_fallback(tmp_path, launch, reference):
    workdir = reference.checkpoint_copy(tmp_path, 2, 4, 6, 8, 10, 12)
    ckpts = workdir / "checkpoints"
    params = damage_silently(reference, ckpts / "12", "params/", tmp_path / "trials")
    moments = damage_silently(reference, ckpts / "10", "opt_state/", tmp_path / "trials")
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


def test_two_processes_agree_to_skip_a_damaged_checkpoint(tmp_path, launch, reference):
    workdir = reference.checkpoint_copy(tmp_path, 10, 12)
    damage_silently(reference, workdir / "checkpoints" / "12", "params/", tmp_path / "trials")
    first, second = [launch(workdir, STOP, FALLBACK, devices=4, env=env) for env in harness.pair_envs()]
    assert [first.finish(), second.finish()] == [0, 0], first.output() + second.output()
    assert re.search(r"renamed it to 12\.unreadable-\d+ and falling back to step 10", first.output())
    assert "at step 10 " in first.output()
    records = harness.metric_records(workdir)
    assert [r["step"] for r in records] == [11]  # both processes trained from 10: their batches are step 11's
    assert records[0]["loss"] == pytest.approx(reference.losses[11], rel=1e-6)
