"""SIGKILL at any moment, mid-save included: each relaunch resumes from the newest complete checkpoint.

The full count (20 or more random kills) is ``python tests/reliability/kill_trials.py --trials=20``;
here three kills, one of each kind, keep CI short.
"""

from kill_trials import kill_trials


def test_killed_runs_resume_from_the_newest_complete_checkpoint_with_the_same_losses(tmp_path, launch, reference):
    summary = kill_trials(tmp_path, 3, launch=launch, reference_losses=reference.losses, seed=1,
                          modes=("mid-save", "after-step", "startup"))
    assert summary["killed_mid_save"] >= 1  # the mid-save kill really left an incomplete save behind
    assert summary["trials"][1]["resumed_at"] == summary["trials"][0]["newest_complete_after_kill"]
