"""Two processes of 4 CPU devices each (jax.distributed over gloo): killed, resumed past a damaged checkpoint,
preempted and continued by one process, with the losses of one process on 8 devices."""

import json
import re
import signal
import subprocess
import sys

import pytest

import harness
from damage import damage_silently


def launch_pair(launch, workdir, *overrides):
    return [launch(workdir, *overrides, devices=4, env=env) for env in harness.pair_envs()]


def test_two_processes_survive_a_kill_and_damage_agree_on_preemption_and_match_one_process(tmp_path, launch,
                                                                                          reference):
    # SIGKILL takes the whole job down mid-run, after its first two checkpoints; then bytes of the newest
    # flip on disk, where Orbax would read them without complaint.
    first, second = launch_pair(launch, tmp_path)
    assert first.wait_for(harness.step_line(6)), first.output()
    for run in (first, second):
        run.signal(signal.SIGKILL)
    *_, newest, damaged = harness.complete_steps(tmp_path)
    damage_silently(tmp_path / "checkpoints" / str(damaged), "params/", tmp_path / "trials")

    # Both find the damage and resume from the checkpoint before it (the fallback). Then SIGTERM reaches one
    # process only: both stop before the same step, save it together and exit 0.
    first, second = launch_pair(launch, tmp_path, "--config.checkpoint.fallback_on_corrupt=true")
    assert first.wait_for(rf"checkpoint .*/{damaged} does not match the fingerprints .* falling back to step "
                          rf"{newest}$"), first.output()
    assert first.wait_for(r"resumed from .* at step (\d+)").group(1) == str(newest), first.output()
    assert first.wait_for(harness.step_line(newest + 2)), first.output()
    second.signal(signal.SIGTERM)
    assert [first.finish(), second.finish()] == [0, 0], first.output() + second.output()
    step = int(re.search(r"stopped at step (\d+) \(preempted by SIGTERM\)", first.output()).group(1))
    assert step > newest + 2 and harness.complete_steps(tmp_path)[-1] == step
    saved_by = sorted(p.name for p in (tmp_path / "checkpoints" / str(step) / "data").glob("process_*"))
    assert saved_by == ["process_0-of-2.json", "process_1-of-2.json"]

    # The same global batches reach the model (each process reads its rows); only reductions differ.
    records = harness.metric_records(tmp_path)
    assert {r["step"] for r in records} == set(range(1, step + 1))
    for r in records:
        assert r["loss"] == pytest.approx(reference.losses[r["step"]], rel=1e-6), r

    # One process continues the two processes' run: it takes both processes' data positions, so the
    # global batches, and the losses, are those of one uninterrupted process.
    single = launch(tmp_path)
    assert single.finish() == 0, single.output()
    assert f"at step {step}" in single.output()
    records = harness.metric_records(tmp_path)
    assert max(r["step"] for r in records) == max(reference.losses) > step
    for r in records:
        assert r["loss"] == pytest.approx(reference.losses[r["step"]], rel=1e-6), r


def test_two_processes_evaluate_like_one(tmp_path, reference):
    """launch/evaluate.py on a pod: every process runs the same command (started like tpu_run.py), batches
    split over all 8 devices of both; the scores equal one process's, and process 0 alone writes them."""
    flags = [f"--workdir={reference.workdir}", "--methods=drope,rope", "--lengths=1,2", "--tasks=ppl,niah",
             "--niah_tasks=passkey", "--depths=0.5", "--niah_samples=4", "--ppl_sequences=4", "--batch_size=8",
             "--template=short"]

    def evaluate(out, devices, env=None):
        return subprocess.Popen([sys.executable, str(harness.REPO / "launch" / "evaluate.py"), *flags, f"--out={out}"],
                                env=harness.program_env(devices, env), stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True)

    one = evaluate(tmp_path / "one", 1)
    assert one.wait(300) == 0, one.stdout.read()
    pair = [evaluate(tmp_path / "two", 4, env) for env in harness.pair_envs()]
    assert [p.wait(300) for p in pair] == [0, 0], pair[0].stdout.read() + pair[1].stdout.read()
    alone, together = (json.loads((tmp_path / d / "results.json").read_text()) for d in ("one", "two"))
    assert together["timing"]["devices"] == 8 and alone["timing"]["devices"] == 1
    assert together["niah"] == alone["niah"]
    for method, by_length in alone["ppl"].items():
        assert together["ppl"][method] == pytest.approx(by_length, rel=1e-5), method
        for length, nll in alone["niah_answer_nll"][method]["passkey"].items():
            assert together["niah_answer_nll"][method]["passkey"][length] == pytest.approx(nll, rel=1e-5)
