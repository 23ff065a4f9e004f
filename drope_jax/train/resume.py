"""Which checkpoint a relaunch resumes from, and restoring it.

The newest complete checkpoint, if it fits the config. One that cannot be read (a truncated
file, say), or whose contents differ from the fingerprints saved with it (flipped bytes), stops the run
with its name; only with ``config.checkpoint.fallback_on_corrupt`` is it renamed aside (kept, not
deleted) and the next older complete one used instead.
"""

from __future__ import annotations

import jax
import numpy as np
from jax.experimental import multihost_utils

from drope_jax.errors import ConfigError, first_line
from drope_jax.run_config import Plan
from drope_jax.train import fingerprint
from drope_jax.train.checkpoint import Checkpointer, check_same_model


class Unreadable(ConfigError):
    """A checkpoint on disk cannot be read."""


def check_fits(meta: dict, plan: Plan, workdir) -> None:
    """Refuses, before anything compiles or is written, a checkpoint this config cannot continue."""
    check_same_model(meta, plan.model, workdir)
    if meta["flip_step"] != plan.flip_step:
        raise ConfigError(f"{workdir} was trained with the flip at step {meta['flip_step']}, the config says "
                          f"{plan.flip_step}; restore config.drope or use a new --workdir")


def resume_step(ckpt: Checkpointer, plan: Plan, workdir, *, fallback: bool, log=print) -> int | None:
    """The newest complete checkpoint whose metadata reads and fits the config; None: start afresh."""
    for step in sorted(ckpt.all_steps(), reverse=True):
        try:
            meta = ckpt.meta(step)
        except Exception as e:  # a truncated or garbled file: whatever the reader raised
            _unreadable(ckpt, step, e, fallback, log)
            continue
        check_fits(meta, plan, workdir)
        return step
    return None


def restore(ckpt: Checkpointer, step: int, abstract_state, data_iterator, *, plan: Plan, workdir,
            fallback: bool, log=print) -> tuple[int, dict]:
    """``(step, state)`` from checkpoint ``step``, or from an older one if it is unreadable and ``fallback``."""
    while True:
        try:
            state, error = ckpt.restore(step, abstract_state, data_iterator), None
        except Exception as e:
            state, error = None, e
        if _everywhere(error is None):
            return step, state
        _unreadable(ckpt, step, error or RuntimeError("unreadable on another process"), fallback, log)
        step = resume_step(ckpt, plan, workdir, fallback=fallback, log=log)  # not None: an older one exists


def _unreadable(ckpt: Checkpointer, step: int, error: Exception, fallback: bool, log) -> None:
    """Raises ``Unreadable`` naming the checkpoint, or, with ``fallback``, sets it aside and logs that."""
    while (error.__cause__ or error.__context__) is not None:  # the root cause names the file and the flaw
        error = error.__cause__ or error.__context__
    older = [s for s in ckpt.all_steps() if s < step]
    what = first_line(error) if isinstance(error, fingerprint.Mismatch) else \
        f"checkpoint {ckpt.directory / str(step)} cannot be read ({type(error).__name__}: {first_line(error)})"
    if not fallback or not older:
        hint = (f"set --config.checkpoint.fallback_on_corrupt=true to resume from step {max(older)}" if older
                else "no older complete checkpoint exists; use a new --workdir to start afresh")
        raise Unreadable(f"{what}; no checkpoint was changed. Move it aside, or {hint}")
    moved = ckpt.set_aside(step)
    log(f"{what}; renamed it to {moved.name} and falling back to step {max(older)}")


def _everywhere(ok: bool) -> bool:
    """Whether ``ok`` holds on every process (they must agree on which checkpoint they resume)."""
    if jax.process_count() == 1:
        return ok
    return bool(np.all(multihost_utils.process_allgather(np.array(ok))))
