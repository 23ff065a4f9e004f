"""SIGKILL the tiny quickstart run at random moments and relaunch it each time.

  python tests/reliability/kill_trials.py --trials=20 [--seed=0] [--total_steps=48]

Each trial launches ``launch/tpu_run.py`` on the same workdir and kills it with SIGKILL (no handler
runs, nothing is cleaned up), in one of three ways:

- ``startup``: a random moment in its first seconds: importing, restoring, compiling;
- ``after-step``: a random moment just after a random step, often inside an asynchronous save;
- ``mid-save``: once the launch has completed a checkpoint, as soon as the next one's temporary
  directory appears, i.e. during that asynchronous save.

After each kill it notes the newest complete checkpoint on disk, and checks that the next launch
resumes from exactly that step (or starts afresh if there is none), that incomplete saves are
ignored, and that the newest complete checkpoint never goes backwards (none is deleted because of
an incomplete one). Finally the run finishes, and every logged loss, of first runs and of steps
re-run after a resume alike, must equal an uninterrupted run's.
"""

from __future__ import annotations

import argparse
import pathlib
import random
import re
import sys
import tempfile
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

import harness  # noqa: E402

MODES = ("startup", "after-step", "mid-save")


def kill_trials(workdir, trials: int, *, launch, reference_losses: dict[int, float], overrides=(), seed: int = 0,
                modes=None, log=print) -> dict:
    """Runs the trials, then the run to its end; raises AssertionError on any broken guarantee."""
    rng = random.Random(seed)
    workdir = pathlib.Path(workdir)
    total = max(reference_losses)
    newest = None  # the newest complete checkpoint: where the next launch must resume
    summary = {"trials": [], "killed_mid_save": 0}
    to_first_step = 3.0  # seconds from a launch to its first step, as last seen
    for trial in range(trials):
        mode = modes[trial % len(modes)] if modes else rng.choice(MODES)
        started = time.time()
        run = launch(workdir, *overrides)
        resumed_at = _kill(run, mode, rng, workdir, started, to_first_step, total)
        to_first_step = run.first_step_after or to_first_step
        run.proc.wait(60)
        if run.proc.returncode == 0:
            raise AssertionError(f"trial {trial}: the run finished before it was killed; use more steps\n"
                                 + run.output())
        _check_resume(trial, run, resumed_at, newest)
        steps = harness.complete_steps(workdir)
        now_newest = steps[-1] if steps else None
        if newest is not None and (now_newest is None or now_newest < newest):
            raise AssertionError(f"trial {trial}: the newest complete checkpoint went from {newest} to {now_newest}")
        fresh_tmp = [name for name in harness.incomplete_saves(workdir)
                     if (workdir / "checkpoints" / name).stat().st_mtime > started]
        summary["killed_mid_save"] += bool(fresh_tmp)
        summary["trials"].append({"mode": mode, "resumed_at": resumed_at, "newest_complete_after_kill": now_newest,
                                  "incomplete_save_left": fresh_tmp})
        log(f"trial {trial + 1:>2}/{trials}: {mode:<10} resumed at {resumed_at}; killed; newest complete "
            f"checkpoint {now_newest}; incomplete saves left by this kill: {fresh_tmp or 'none'}")
        newest = now_newest

    final = launch(workdir, *overrides)
    resumed_at = _resume_line(final)
    if final.finish() != 0:
        raise AssertionError("the final relaunch failed:\n" + final.output())
    _check_resume(trials, final, resumed_at, newest)
    harness.assert_losses_equal(workdir, reference_losses)
    summary["final_resumed_at"] = resumed_at
    log(f"final relaunch resumed at {resumed_at} and finished; every logged loss equals the uninterrupted run's "
        f"({len(harness.metric_records(workdir))} records over {total} steps); kills that left an incomplete "
        f"save: {summary['killed_mid_save']}/{trials}")
    return summary


def _kill(run: harness.Run, mode: str, rng: random.Random, workdir: pathlib.Path, started: float,
          to_first_step: float, total: int):
    """Kills ``run`` as ``mode`` says; returns the step it said it resumed from (None: afresh; or "unknown")."""
    if mode == "startup":
        time.sleep(rng.uniform(0, to_first_step))
        run.signal()
        return _resume_line(run, timeout=30, required=False)
    resumed_at = _resume_line(run)
    if mode == "after-step":
        first = (resumed_at or 0) + 1  # its progress line was read by _resume_line
        target = min(first + rng.randint(0, 2), total - 1)
        if target > first and run.wait_for(harness.step_line(target)) is None:
            raise AssertionError(f"the run ended before step {target}:\n" + run.output())
        time.sleep(rng.uniform(0, 0.5))
    else:  # mid-save: once this launch has completed a checkpoint, during its next save
        root = workdir / "checkpoints"
        for kind in (r"\d+", r"\d+\..*tmp.*"):
            while not any(re.fullmatch(kind, p.name) and p.stat().st_mtime > started for p in root.iterdir()):
                if run.proc.poll() is not None:
                    raise AssertionError("the run ended before a second save; use more steps\n" + run.output())
                time.sleep(0.002)
    run.signal()
    return resumed_at


def _resume_line(run: harness.Run, timeout: float = 180, required: bool = True):
    """The step of the ``resumed from ... at step N`` line, read up to the first progress line; None: fresh."""
    try:
        m = run.wait_for(r"resumed from .* at step (\d+)|" + harness.STEP_LINE, timeout)
    except TimeoutError:
        if required:
            raise
        return "unknown"
    if m is None:
        if required:
            raise AssertionError("the run ended before training:\n" + run.output())
        return "unknown"
    return int(m.group(1)) if m.group(0).startswith("resumed") else None


def _check_resume(trial: int, run: harness.Run, resumed_at, newest) -> None:
    if resumed_at != "unknown" and resumed_at != newest:
        raise AssertionError(f"trial {trial}: resumed at {resumed_at}, but the newest complete checkpoint was "
                             f"{newest}\n" + run.output())
    if re.search(r"Traceback|error:", run.output()):
        raise AssertionError(f"trial {trial}: the run reported an error\n" + run.output())


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--total_steps", type=int, default=48)
    parser.add_argument("--workdir", default="")
    args = parser.parse_args()
    root = pathlib.Path(args.workdir or tempfile.mkdtemp(prefix="kill_trials-"))
    overrides = harness.flags(train=dict(total_steps=args.total_steps),
                              drope=dict(flip_step=args.total_steps * 3 // 4))

    def launch(workdir, *more):
        return harness.Run(workdir, *more, cache_dir=root / "xla_cache")

    start = time.time()
    print(f"uninterrupted reference run in {root / 'reference'} ...", flush=True)
    reference = launch(root / "reference", *overrides)
    if reference.finish() != 0:
        sys.exit(reference.output())
    summary = kill_trials(root / "killed", args.trials, launch=launch, overrides=overrides, seed=args.seed,
                          reference_losses=harness.losses(root / "reference"), log=lambda s: print(s, flush=True))
    modes = {m: sum(t["mode"] == m for t in summary["trials"]) for m in MODES}
    print(f"PASS: {args.trials} kills ({modes}), every relaunch resumed from the newest complete checkpoint, "
          f"final losses equal the uninterrupted run's; {time.time() - start:.0f}s")


if __name__ == "__main__":
    main()
