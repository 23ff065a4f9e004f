"""Non-finite losses and gradients: skipped and counted, or the run stops naming the step and the
quantity; a non-finite state is never saved."""

import jax
import numpy as np
import pytest

from drope_jax import checkpoint, train

import harness


def newest_state(workdir):
    ckpt = checkpoint.Checkpointer(workdir / "checkpoints")
    step = ckpt.latest_step()
    setup = train.make_setup(harness.config())
    return step, ckpt.restore(step, setup.abstract_state())


def test_a_nonfinite_step_is_skipped_counted_and_training_goes_on(tmp_path):
    train.run(harness.config(faults=dict(nonfinite_loss_at=(3,)), train=dict(stop_at_step=5)), tmp_path)
    records = {r["step"]: r for r in harness.metric_records(tmp_path)}
    assert [records[s]["skipped"] for s in range(1, 6)] == [False, False, True, False, False]
    assert np.isnan(records[3]["loss"]) and np.isfinite(records[4]["loss"])


@pytest.mark.parametrize("sections, message", [
    (dict(faults=dict(nonfinite_grads_at=(3, 4, 5)), train=dict(max_consecutive_nonfinite=3)),
     r"step 5: non-finite grad_norm nan; 3 step\(s\) in a row"),
    (dict(faults=dict(nonfinite_loss_at=(3,)), train=dict(nonfinite="stop")), r"step 3: non-finite loss nan"),
], ids=["3-consecutive-grad-faults", "policy-stop"])
def test_repeated_faults_stop_the_run_naming_step_and_quantity(tmp_path, sections, message):
    with pytest.raises(train.TrainingStopped, match=message):
        train.run(harness.config(**sections), tmp_path)
    step, state = newest_state(tmp_path)
    assert step <= 4 and not checkpoint.nonfinite_leaves(state)


def test_a_nonfinite_state_is_never_saved_over_a_good_checkpoint(tmp_path):
    # Step 5's update leaves a NaN parameter that its own finiteness check cannot see (as an overflow
    # in the update would); the save at step 6 must refuse it.
    with pytest.raises(checkpoint.NotSaved, match=r"step 6: the train state has non-finite values in params/"):
        train.run(harness.config(faults=dict(nonfinite_params_at=(5,)), train=dict(max_consecutive_nonfinite=10)),
                  tmp_path)
    assert harness.complete_steps(tmp_path) == [2, 4] and not harness.incomplete_saves(tmp_path)
    step, state = newest_state(tmp_path)
    assert step == 4 and not checkpoint.nonfinite_leaves(state)
    assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(state["params"]))
