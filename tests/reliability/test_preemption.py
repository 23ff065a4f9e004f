"""SIGTERM (a preemption notice): the run finishes its step, saves, exits 0 and says where it resumes."""

import re
import signal

from drope_jax.train import loop

import harness


def test_sigterm_saves_and_exits_zero_and_the_relaunch_resumes_there(tmp_path, launch, reference, capsys):
    run = launch(tmp_path)
    assert run.wait_for(harness.step_line(3)) is not None, run.output()
    run.signal(signal.SIGTERM)
    assert run.finish() == 0, run.output()
    stop = re.search(r"stopped at step (\d+) \(preempted by SIGTERM\).* resume from step (\d+)", run.output())
    assert stop, run.output()
    step = int(stop.group(1))
    assert 3 < step < 12 and int(stop.group(2)) == step
    assert harness.complete_steps(tmp_path)[-1] == step  # saved there, whatever the every_steps cadence
    assert not harness.incomplete_saves(tmp_path)

    loop.run(harness.config(), tmp_path)
    assert f"at step {step} " in capsys.readouterr().out
    harness.assert_losses_equal(tmp_path, reference.losses)
