"""The disk: unwritable at start-up, full mid-run, or holding a corrupt checkpoint; and device memory running out."""

import re
import time

import jax
import pytest

from drope_jax.errors import ConfigError
from drope_jax.train import loop, resume, setup

import harness


def test_an_unusable_checkpoint_directory_fails_at_start_up(tmp_path, nothing_lowered):
    (tmp_path / "file").write_text("not a directory")
    with pytest.raises(ConfigError, match=r"cannot write checkpoints to .*file/run/checkpoints \(Not a directory\)"):
        loop.run(harness.config(), tmp_path / "file" / "run")


def test_a_full_disk_at_start_up_fails_before_anything_runs(tmp_path, launch, reference):
    workdir = reference.checkpoint_copy(tmp_path, 8)
    before = harness.snapshot(workdir)
    run = launch(workdir, max_file_bytes=0)
    assert run.finish() == 1
    assert re.fullmatch(r"error: cannot write checkpoints to .*/checkpoints \(File too large\); free space there.*",
                        run.lines[-1]), run.output()
    assert harness.snapshot(workdir) == before


def test_a_disk_filling_up_mid_run_stops_with_an_error_and_keeps_the_last_good_checkpoint(tmp_path, launch,
                                                                                         reference, capsys):
    run = launch(tmp_path)
    while not [s for s in harness.complete_steps(tmp_path) if s >= 4]:
        assert run.proc.poll() is None, run.output()
        time.sleep(0.01)
    harness.limit_file_size(0, run.proc.pid)
    assert run.finish() == 1
    kept = harness.complete_steps(tmp_path)[-1]
    assert 4 <= kept < 12
    errors = [line for line in run.lines if line.startswith("error: ")]
    assert len(errors) == 1 and f"newest complete checkpoint in {tmp_path}/checkpoints (step {kept}) is kept" \
        in errors[0], run.output()

    loop.run(harness.config(), tmp_path)  # space is back: the relaunch continues from there
    assert f"at step {kept} " in capsys.readouterr().out
    harness.assert_losses_equal(tmp_path, reference.losses)


def test_a_corrupt_checkpoint_is_named_and_skipped_only_when_asked(tmp_path, reference, capsys):
    workdir = reference.checkpoint_copy(tmp_path, 8, 10)
    largest = max((workdir / "checkpoints" / "10" / "state").rglob("*"), key=lambda p: p.stat().st_size)
    largest.write_bytes(largest.read_bytes()[:1000])  # truncated
    before = harness.snapshot(workdir / "checkpoints")
    config = harness.config(train=dict(stop_at_step=10))
    with pytest.raises(resume.Unreadable, match=r"checkpoint .*/checkpoints/10 cannot be read "
                                                r"\(ValueError: .*"
                                                r"Error reading .* at local file .*/10/state/.*"
                                                r"fallback_on_corrupt=true to resume from step 8"):
        loop.run(config, workdir)
    assert harness.snapshot(workdir / "checkpoints") == before

    config.checkpoint.fallback_on_corrupt = True
    loop.run(config, workdir)
    out = capsys.readouterr().out
    moved = re.search(r"renamed it to (10\.unreadable-\d+) and falling back to step 8", out).group(1)
    assert "resumed from" in out and "at step 8 " in out
    assert harness.snapshot(workdir / "checkpoints" / moved) == [  # set aside whole, nothing deleted
        (name[len("10/"):], size, mtime) for name, size, mtime in before if name.startswith("10/")]
    assert harness.complete_steps(workdir) == [8, 10]
    harness.assert_losses_equal(workdir, {s: reference.losses[s] for s in (9, 10)})


def test_running_out_of_device_memory_stops_naming_the_fix_and_keeps_the_last_checkpoint(tmp_path, monkeypatch):
    """The CPU never runs out, so the step raises what a GPU raises when it cannot allocate, at its third call;
    any other XLA error goes through unchanged."""
    real_phase_step = setup.Setup.phase_step

    def failing_on_third_call(error):
        def phase_step(self, phase):
            step, calls = real_phase_step(self, phase), []

            def fails(state, batch):
                calls.append(1)
                if len(calls) == 3:
                    raise error
                return step(state, batch)
            return fails
        return phase_step

    monkeypatch.setattr(setup.Setup, "phase_step", failing_on_third_call(jax.errors.JaxRuntimeError(
        "RESOURCE_EXHAUSTED: Out of memory while trying to allocate 1.50GiB.\nBufferAssignment OOM Debugging.")))
    config = harness.config(checkpoint=dict(every_steps=2))
    with pytest.raises(loop.TrainingStopped) as stopped:
        loop.run(config, tmp_path)
    assert str(stopped.value) == (
        "out of device memory at step 3 (XLA: RESOURCE_EXHAUSTED: Out of memory while trying to allocate 1.50GiB.); "
        f"the newest complete checkpoint in {tmp_path}/checkpoints (step 2) is kept. Give each device less to hold: "
        "raise config.train.grad_accum (now 1; e.g. --config.train.grad_accum=2), set --config.model.remat=full, "
        "or use more devices. launch/aot_compile.py --search_grad_accum finds the grad_accum that fits a TPU "
        "slice, on any host")
    assert harness.complete_steps(tmp_path) == [2]

    monkeypatch.setattr(setup.Setup, "phase_step", failing_on_third_call(jax.errors.JaxRuntimeError("INTERNAL: x")))
    with pytest.raises(jax.errors.JaxRuntimeError, match="INTERNAL: x"):
        loop.run(config, tmp_path / "other")
