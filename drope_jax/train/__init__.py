"""Training: from a config to a run that flips, survives preemption and resumes exactly.

- ``setup``: ``Setup``, what a config builds (plan, mesh, spec, optimizer, state shardings, each phase's
  compiled step), shared with the benchmark and the AOT compile;
- ``step``: the one train step, pure (a non-finite update is skipped and reported);
- ``optim``: AdamW and the learning-rate schedules of both phases;
- ``loop``: the job: the RoPE control, the branch, the loop and the flip;
- ``checkpoint``, ``resume``, ``branch``: Orbax checkpoints, relaunch and branching at the flip;
- ``metrics``, ``preemption``, ``faults``: logging and MFU, SIGTERM handling, injected numerical faults.
"""
