"""Non-finite losses and gradients: skipped and counted, or the run stops naming the step and the
quantity; a non-finite state is never saved."""

import numpy as np
import pytest

from drope_jax.train import checkpoint, loop, setup

import harness

# Step 3's loss is NaN; step 5's update leaves a NaN parameter that its own check cannot see (as an
# overflow in the update would). Shared by two tests, so the faulty step compiles once.
FAULTS = dict(nonfinite_loss_at=(3,), nonfinite_params_at=(5,))


def newest_state(workdir):
    ckpt = checkpoint.Checkpointer(workdir / "checkpoints")
    step = ckpt.latest_step()
    return step, ckpt.restore(step, setup.make_setup(harness.config()).abstract_state())


def test_a_faulty_step_is_skipped_and_a_nonfinite_state_is_never_saved(tmp_path):
    with pytest.raises(checkpoint.NotSaved, match=r"step 6: the train state has non-finite values in params/"):
        loop.run(harness.config(faults=FAULTS, train=dict(max_consecutive_nonfinite=10)), tmp_path)
    records = {r["step"]: r for r in harness.metric_records(tmp_path)}
    assert [records[s]["skipped"] for s in range(1, 6)] == [False, False, True, False, False]
    assert np.isnan(records[3]["loss"]) and all(np.isfinite(records[s]["loss"]) for s in (4, 5))
    # The save at step 6 was refused before anything was written; step 4 stays the newest, and finite.
    assert harness.complete_steps(tmp_path) == [2, 4] and not harness.incomplete_saves(tmp_path)
    step, state = newest_state(tmp_path)
    assert step == 4 and not checkpoint.nonfinite_leaves(state)


@pytest.mark.parametrize("sections, message", [
    (dict(faults=dict(nonfinite_grads_at=(3, 4, 5)), train=dict(max_consecutive_nonfinite=3)),
     r"step 5: non-finite grad_norm nan; 3 step\(s\) in a row were skipped"),
    (dict(faults=FAULTS, train=dict(nonfinite="stop")), r"step 3: non-finite loss nan; 1 step\(s\)"),
], ids=["3-consecutive-grad-faults", "policy-stop"])
def test_repeated_faults_stop_the_run_naming_step_and_quantity(tmp_path, sections, message):
    with pytest.raises(loop.TrainingStopped, match=message) as stopped:
        loop.run(harness.config(**sections), tmp_path)
    assert "suspect" not in str(stopped.value)  # a fresh start resumed from no checkpoint
    step, state = newest_state(tmp_path)
    assert step <= 4 and not checkpoint.nonfinite_leaves(state)


def test_faults_right_after_a_resume_name_its_checkpoint_as_a_suspect(tmp_path, reference):
    workdir = reference.checkpoint_copy(tmp_path, 2)
    suspect = rf"step 3: non-finite loss nan; .* the faults began 1 step\(s\) after this run resumed from " \
              rf"{workdir}/checkpoints/2, so suspect that checkpoint .* \(mv .*/2 .*/2\.suspect\)"
    with pytest.raises(loop.TrainingStopped, match=suspect):
        loop.run(harness.config(faults=FAULTS, train=dict(nonfinite="stop")), workdir)
